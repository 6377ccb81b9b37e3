"""Checkpoints: a folder with ``model.safetensors``, ``config.json``, ``checkpoint.json`` and tokenizer files.

``EMBEDDED_DEFAULT`` is the shipped default model (``tpo_core/assets/default``). The model side builds a
``TPOModel`` from a folder with ``TPOModel.from_pretrained`` (``tpo_core.model``); this module only reads and
writes the files.

No pickles: weights are safetensors only. Loading is strict: missing and unexpected keys are named in
the error. ``checkpoint.json`` records whether LoRA adapters are applied (unmerged keys) and the dtype.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .config import TPOConfig

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
META = "checkpoint.json"
TOKENIZER = "tokenizer.json"
EMBEDDED_DEFAULT = Path(__file__).parent / "assets" / "default"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class CheckpointError(ValueError):
    pass


class UntrainedHeadError(ValueError):
    """A task was routed to a head whose weights were never trained (``checkpoint.json: untrained_heads``)."""


def untrained_heads(path: str | Path) -> list[str]:
    """The heads a checkpoint folder marks as untrained (e.g. ``["temporal"]`` after ``tpo convert``)."""
    meta = Path(path) / META
    return list(json.loads(meta.read_text()).get("untrained_heads", [])) if meta.is_file() else []


def refuse_untrained(model, head: str) -> None:
    """Raise ``UntrainedHeadError`` if ``model`` marks ``head`` untrained (never decode a random head silently)."""
    if head in getattr(model, "untrained_heads", ()):
        raise UntrainedHeadError(
            f"the model routed this request to its {head} head, but that head is untrained in this checkpoint "
            f"(checkpoint.json lists untrained_heads {sorted(model.untrained_heads)}; a checkpoint converted from "
            "VideoChat-TPO has no usable temporal head, because the release's CG-DETR needs two extra models). "
            f"Train the {head} head on this checkpoint first (docs/convert.md, 'Temporal task'), or ask a question "
            "that does not need it")


def save_checkpoint(model, path: str | Path, dtype: torch.dtype | None = None, extra_meta: dict | None = None) -> Path:
    """Write ``model`` (a TPOModel) to the folder ``path``; weights cast to ``dtype`` if given."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state, seen = {}, set()
    for k, v in model.state_dict().items():
        t = v.detach().to(dtype or v.dtype).contiguous().cpu()
        if t.untyped_storage().data_ptr() in seen:  # tied tensors (e.g. SAM2's shared positional embedding)
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        state[k] = t
    save_file(state, str(path / WEIGHTS), metadata={"format": "pt"})
    model.config.to_json(path / CONFIG)
    if model.tokenizer is not None:
        model.tokenizer.save(str(path / TOKENIZER))
    dtype_name = next(n for n, d in DTYPES.items() if d == next(iter(state.values())).dtype)
    meta = {"format": "tpo-edge/checkpoint", "version": 1, "lora_applied": bool(model.llm.lora_applied),
            "dtype": dtype_name, "num_tensors": len(state), **(extra_meta or {})}
    if getattr(model, "untrained_heads", ()):
        meta["untrained_heads"] = sorted(model.untrained_heads)
    (path / META).write_text(json.dumps(meta, indent=2) + "\n")
    return path


def checkpoint_hash(path: str | Path) -> str:
    """sha256 of the weights file (identifies the source checkpoint in export manifests)."""
    h = hashlib.sha256()
    with open(Path(path) / WEIGHTS, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def read_checkpoint(path: str | Path):
    """A checkpoint folder -> (config, meta dict, tokenizer, state dict); CheckpointError when a file is missing."""
    from .data.tokenizer_build import load_tokenizer

    path = Path(path)
    for name in (WEIGHTS, CONFIG, META):
        if not (path / name).is_file():
            raise CheckpointError(f"checkpoint {path} lacks {name}; a checkpoint folder is written by "
                                  "`tpo train` or TPOModel.save_pretrained and holds "
                                  f"{WEIGHTS}, {CONFIG}, {META} and {TOKENIZER}")
    meta = json.loads((path / META).read_text())
    config = TPOConfig.from_json(path / CONFIG)
    tokenizer = load_tokenizer(str(path)) if (path / TOKENIZER).is_file() else load_tokenizer(config.llm.tokenizer)
    return config, meta, tokenizer, load_file(str(path / WEIGHTS))


def load_state_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``load_state_dict(strict=True)`` with a readable error naming missing/unexpected/mis-shaped keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                    for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or shapes:
        def show(keys):
            return ", ".join(keys[:10]) + (f" ... (+{len(keys) - 10} more)" if len(keys) > 10 else "")

        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys: {show(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys: {show(unexpected)}")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches: {show(shapes)}")
        raise CheckpointError(f"checkpoint {source} does not match the model built from its config: "
                              + "; ".join(parts) + ". Was it written by another toolkit version or preset?")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True)
