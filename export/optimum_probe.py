"""What optimum / optimum-onnx can do for the TPO LLM graph, measured (``python -m export.optimum_probe``).

Runs optimum's own Mistral export config on the tiny TaskLLM's (LoRA-merged) Mistral and records, as data:

1. stock ``MistralOnnxConfig`` (text-generation with past): exports and passes ``validate_model_outputs``;
   its IO is ``input_ids`` (embedding table inside the graph), logits for *every* position, KV named
   ``past_key_values.N.key``.
2. ``inputs_embeds`` instead of ``input_ids``: the config machinery hard-codes ``input_ids``
   (``OnnxConfig.generate_dummy_inputs`` reads ``dummy_inputs["input_ids"]`` to pad the attention mask), so a
   subclass must override ``generate_dummy_inputs``; with that it exports and validates.
3. final hidden states as an output (``output_hidden_states=True``): the exporter flattens the tuple of L+1
   hidden states into anonymous outputs; the one optimum names ``hidden_states`` is the *input embeddings*
   (layer 0), not the final-norm states the heads need, and ``validate_model_outputs`` fails on the unnamed
   extra outputs.
4. optimum forces the TorchScript exporter (``dynamo=False`` for torch >= 2.9) and traces HF's mask/SDPA code.

``docs/export.md`` ("optimum findings") explains why the LLM graph is our own wrapper as a result.
"""

from __future__ import annotations

import json
import tempfile
from collections import OrderedDict
from pathlib import Path


def _tiny_lm():
    import torch

    from tpo_core.config import get_preset
    from tpo_core.modeling.llm import TaskLLM

    torch.manual_seed(0)
    cfg = get_preset("tiny")
    return TaskLLM(cfg.llm, cfg.loc_encoder_hidden).eval().lm


def _embeds_config(hidden: bool, override_dummies: bool):
    import torch
    from optimum.exporters.onnx.model_configs import MistralOnnxConfig
    from optimum.utils import DummyInputGenerator, DummyTextInputGenerator
    from optimum.utils.input_generators import MistralDummyPastKeyValuesGenerator

    class EmbedsGenerator(DummyInputGenerator):
        SUPPORTED_INPUT_NAMES = ("inputs_embeds",)

        def __init__(self, task, normalized_config, batch_size=2, sequence_length=16, **kwargs):
            self.shape = [batch_size, sequence_length, normalized_config.hidden_size]

        def generate(self, input_name, framework="pt", int_dtype="int64", float_dtype="fp32"):
            return self.random_float_tensor(self.shape, framework=framework, dtype=float_dtype)

    class EmbedsConfig(MistralOnnxConfig):
        DUMMY_INPUT_GENERATOR_CLASSES = (EmbedsGenerator, DummyTextInputGenerator, MistralDummyPastKeyValuesGenerator)

        @property
        def inputs(self):
            return OrderedDict(("inputs_embeds", v) if k == "input_ids" else (k, v) for k, v in super().inputs.items())

        @property
        def outputs(self):
            out = super().outputs
            if hidden:
                out["hidden_states"] = {0: "batch_size", 1: "sequence_length"}
            return out

        def generate_dummy_inputs(self, framework="pt", **kwargs):
            if not override_dummies:
                return super().generate_dummy_inputs(framework, **kwargs)
            stock = MistralOnnxConfig(self._config, task=self.task, use_past=self.use_past,
                                      use_past_in_inputs=self.use_past_in_inputs)
            dummies = stock.generate_dummy_inputs(framework, **kwargs)
            ids = dummies.pop("input_ids")
            emb = torch.randn(*ids.shape, self._config.hidden_size)
            return {"inputs_embeds": emb if framework == "pt" else emb.numpy(), **dummies}

    return EmbedsConfig


def _attempt(lm, config, path: Path, model_kwargs=None) -> dict:
    import onnx
    from optimum.exporters.onnx import export, validate_model_outputs

    rec: dict = {}
    try:
        _, outs = export(lm, config, path, opset=18, model_kwargs=model_kwargs)
    except (KeyError, RuntimeError, ValueError) as e:
        return {"export": f"{type(e).__name__}: {e}"[:300]}
    model = onnx.load(str(path), load_external_data=False)
    rec["export"] = "ok"
    names = [i.name for i in model.graph.input]
    past = sum(n.startswith("past_key_values") for n in names)
    rec["inputs"] = [n for n in names if not n.startswith("past_key_values")] + [f"past_key_values.* ({past})"]
    rec["outputs"] = [o.name for o in model.graph.output]
    try:
        validate_model_outputs(config, lm, path, outs, atol=1e-4, use_subprocess=False, model_kwargs=model_kwargs)
        rec["validate"] = "ok"
    except Exception as e:  # noqa: BLE001 - optimum raises several error types; the probe records whichever
        rec["validate"] = f"{type(e).__name__}: {e}"[:300]
    return rec


def _hidden_output_check(lm, config, path: Path) -> dict:
    """Run the graph at another shape (is it dynamic?) and at optimum's own dummy shapes: is the output named
    ``hidden_states`` HF's final-norm hidden state, or the input embeddings?"""
    import numpy as np
    import onnxruntime as ort
    import torch

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = config.generate_dummy_inputs(framework="np")
    past = feeds.pop("past_key_values")
    feeds.update({f"past_key_values.{i}.{kind}": kv[j] for i, kv in enumerate(past)
                  for j, kind in enumerate(("key", "value"))})
    names = [i.name for i in sess.get_inputs()]
    feeds = {k: v for k, v in feeds.items() if k in names}
    out = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
    x = torch.from_numpy(feeds["inputs_embeds"])
    shorter = {**feeds, "inputs_embeds": feeds["inputs_embeds"][:, :3],
               "position_ids": feeds["position_ids"][:, :3],
               "attention_mask": feeds["attention_mask"][:, : feeds["attention_mask"].shape[1] - x.shape[1] + 3]}
    res: dict = {"dummy_input_shape": list(x.shape), "num_outputs": len(out)}
    try:
        sess.run(None, shorter)
        res["runs_with_other_seq_len"] = True
    except Exception as e:  # noqa: BLE001 - ORT raises its own Fail/InvalidArgument types
        res["runs_with_other_seq_len"] = f"no: {str(e).splitlines()[0][:160]}"
    got = out["hidden_states"]
    res["named_hidden_states_is_input_embeds"] = bool(got.shape == x.shape and np.abs(got - x.numpy()).max() < 1e-6)
    with torch.no_grad():
        ref = lm(inputs_embeds=x, attention_mask=torch.from_numpy(feeds["attention_mask"]),
                 position_ids=torch.from_numpy(feeds["position_ids"]), past_key_values=_cache(feeds),
                 output_hidden_states=True)
    final = ref.hidden_states[-1].numpy()
    res["named_hidden_states_is_final"] = bool(got.shape == final.shape and np.abs(got - final).max() < 1e-4)
    return res


def _cache(feeds: dict):
    import torch
    from transformers import DynamicCache

    cache = DynamicCache()
    layers = sorted({int(k.split(".")[1]) for k in feeds if k.startswith("past_key_values")})
    for i in layers:
        cache.update(torch.from_numpy(feeds[f"past_key_values.{i}.key"]),
                     torch.from_numpy(feeds[f"past_key_values.{i}.value"]), i)
    return cache


def probe(folder: str | Path | None = None) -> dict:
    """Run every attempt; returns the findings as a JSON-ready dict."""
    from optimum.exporters.onnx.model_configs import MistralOnnxConfig

    lm = _tiny_lm()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(folder or tmp)
        out.mkdir(parents=True, exist_ok=True)
        kw = {"task": "text-generation", "use_past": True, "use_past_in_inputs": True}
        findings = {"stock_mistral": _attempt(lm, MistralOnnxConfig(lm.config, **kw), out / "stock.onnx")}
        findings["inputs_embeds_no_override"] = _attempt(lm, _embeds_config(False, False)(lm.config, **kw),
                                                         out / "embeds_plain.onnx")
        findings["inputs_embeds"] = _attempt(lm, _embeds_config(False, True)(lm.config, **kw), out / "embeds.onnx")
        hidden_cfg = _embeds_config(True, True)(lm.config, **kw)
        findings["inputs_embeds_hidden"] = _attempt(lm, hidden_cfg, out / "embeds_hidden.onnx",
                                                    {"output_hidden_states": True})
        if findings["inputs_embeds_hidden"].get("export") == "ok":
            findings["hidden_states_output"] = _hidden_output_check(lm, hidden_cfg, out / "embeds_hidden.onnx")
    return findings


if __name__ == "__main__":
    print(json.dumps(probe(), indent=2))
