"""Run ONNX Runtime GenAI's model builder (``onnxruntime_genai.models.builder``) in this process, with transformers 4.x.

Usage (same arguments as the builder)::

    python export/genai_builder.py -i HF_DIR -o OUT -p fp16 -e cuda -c CACHE --extra_options exclude_embeds=true ...

The builder 0.18 imports ``Qwen3_5ForConditionalGeneration`` and ``Qwen3_5MoeForConditionalGeneration`` from
``transformers`` at module level (builders/base.py); those classes exist only in transformers 5.x. That import is
the only place the builder needs transformers 5 for a Mistral decoder: with transformers 4.5x the two names are
stubbed here (they are used only to load Qwen 3.5 checkpoints). With transformers 5 nothing is stubbed.

``export/llm_gqa.py`` runs this file in a subprocess: the builder loads the whole HF model again (float32 under
transformers 4.x), so its memory is returned to the system when it exits.
"""

from __future__ import annotations

import runpy
import sys

TRANSFORMERS5_ONLY = ("Qwen3_5ForConditionalGeneration", "Qwen3_5MoeForConditionalGeneration")


def stub_transformers5_names() -> list[str]:
    """Give ``transformers`` placeholder classes for the names the builder imports but 4.x lacks; return them."""
    import transformers

    stubbed = []
    for name in TRANSFORMERS5_ONLY:
        if not hasattr(transformers, name):
            setattr(transformers, name, type(name, (), {"__doc__": "placeholder: needs transformers 5"}))
            stubbed.append(name)
    return stubbed


def main(argv: list[str] | None = None) -> int:
    stub_transformers5_names()
    sys.argv = ["onnxruntime_genai.models.builder", *(sys.argv[1:] if argv is None else argv)]
    runpy.run_module("onnxruntime_genai.models.builder", run_name="__main__", alter_sys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
