"""The runtime's prompt encoder: the manifest's ``tokenizer.json`` + prompt template -> ``PromptEncoder``.

Sequence layout (``runtime.contract.prompt``)::

    BOS chunk0 | visual_tokens visual embeddings | BOS chunk1 | BOS chunk2(question)

The manifest's ``tokenizer`` section names the file (hash-checked on load) and the BOS / EOS ids; its ``prompt``
section is the :class:`~runtime.contract.prompt.PromptTemplate` itself.
"""

from __future__ import annotations

from runtime.contract.prompt import PromptEncoder
from runtime.manifest import Manifest


def open_tokenizer(manifest: Manifest) -> PromptEncoder:
    """A :class:`PromptEncoder` for ``manifest``; ValueError when the tokenizer file cannot be used."""
    from tokenizers import Tokenizer

    path = manifest.path_of(manifest.tokenizer.file)
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # noqa: BLE001 -- tokenizers raises a bare Exception subclass on parse errors
        raise ValueError(f"tokenizer file {path} cannot be parsed ({e}); re-export with `tpo export`") from e
    for token, info in manifest.task_tokens.items():
        got = tok.token_to_id(token)
        if got != info.id:
            raise ValueError(f"tokenizer maps {token} to {got} but the manifest says {info.id}; the export folder is "
                             "inconsistent: re-export with `tpo export`")
    spec = manifest.tokenizer
    return PromptEncoder(tok, manifest.prompt, spec.bos_id, spec.eos_id, spec.bos_per_chunk,
                         max_context=manifest.kv.max_context)
