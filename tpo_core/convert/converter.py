"""Convert the VideoChat-TPO release (sharded safetensors) into a tpo-edge checkpoint folder.

``convert(src, out)`` reads the release shard by shard (one tensor in memory at a time, plus the few that
wait for the other part of a multi-source transform), applies ``table.conversion_table`` and writes:

- ``model.safetensors``: every tensor ``TPOModel(config)`` has (LoRA unmerged, or merged with ``merge_lora``),
  written incrementally at its final offset, so the weights are never held twice;
- ``extras.safetensors``: the official tensors tpo-edge does not use, verbatim under their official names;
- ``convert_report.json``: totals, every extra with its reason, every target with its transform and sources,
  the tensors that did not come from the release (the temporal head) and the time and peak RSS;
- ``config.json``, ``checkpoint.json`` (with ``"untrained_heads": ["temporal"]``) and ``tokenizer.json`` (the
  release's SentencePiece model converted to a ``tokenizers`` JSON, task tokens verified at 32000..32006).

``TPOModel.from_pretrained(out)`` loads the result strictly. The temporal head is freshly initialized
(seeded): the release's CG-DETR needs two models the checkpoint lacks, so ``TPOModel.generate`` refuses the
temporal task on this checkpoint until ``tpo train --stage 2 --heads temporal`` has trained it.
"""

from __future__ import annotations

import hashlib
import json
import resource
import time
from pathlib import Path

import torch

from tpo_core.config import TPOConfig, videochat_tpo_7b_config

from .io import INDEX, ReleaseFolder, ReleaseFolderError, SafetensorsWriter
from .table import Plan, Target, build_plan

PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
UNTRAINED_PREFIXES = {"temporal": "temporal_head."}  # head -> its parameters, not in the release
REPORT = "convert_report.json"
EXTRAS = "extras.safetensors"
SOURCE_FORMAT = "videochat-tpo"


def config_from_release(release_cfg: dict, base: TPOConfig | None = None) -> TPOConfig:
    """The tpo-edge config of a release from its ``config.json`` (``model_config`` block).

    ``base`` (default: the ``videochat-tpo-7b`` preset) gives everything the release's config does not state
    (Mistral sizes, SAM2 Hiera-L, head widths); the fields it does state must agree with ``base`` or replace
    the preset's (frames, image size, query counts, LoRA rank/alpha/dropout).
    """
    mc = release_cfg.get("model_config")
    if not isinstance(mc, dict):
        raise ValueError("the release config.json has no 'model_config' block; is this the VideoChat-TPO release?")
    given = base is not None
    cfg = TPOConfig.from_dict((base or videochat_tpo_7b_config()).to_dict())
    vis, bridge, llm = mc.get("vision_encoder", {}), mc.get("bridge", {}), mc.get("llm", {})
    if not given and llm.get("name", "mistral_7b") != "mistral_7b":
        raise ValueError(f"the release's LLM is {llm.get('name')!r}; only 'mistral_7b' is known, pass --config "
                         "with a tpo-edge config JSON for other sizes")
    updates = {
        ("vision", "img_size"): vis.get("img_size"), ("vision", "patch_size"): vis.get("patch_size"),
        ("vision", "num_frames"): vis.get("num_frames"), ("vision", "tubelet_size"): vis.get("tubelet_size"),
        ("vision", "embed_dim"): vis.get("encoder_embed_dim"), ("vision", "depth"): vis.get("encoder_depth"),
        ("vision", "num_heads"): vis.get("encoder_num_heads"),
        ("qformer", "num_query_tokens"): bridge.get("num_query_token"),
        ("qformer", "num_extra_query_tokens"): bridge.get("extra_num_query_token"),
        ("llm", "hidden_size"): llm.get("hidden_size"),
    }
    mismatches = []
    for (part, key), value in updates.items():
        if value is None:
            continue
        if given and getattr(getattr(cfg, part), key) != value:
            mismatches.append(f"{part}.{key}: release {value} vs --config {getattr(getattr(cfg, part), key)}")
        setattr(getattr(cfg, part), key, value)
    if "return_index" in vis and "encoder_depth" in vis:
        cfg.vision.num_blocks_built = vis["encoder_depth"] + int(vis["return_index"]) + 1
    for key, rkey in (("r", "lora_r"), ("alpha", "lora_alpha"), ("dropout", "lora_dropout")):
        if rkey in llm:
            setattr(cfg.llm.lora, key, llm[rkey])
    if mismatches:
        raise ValueError("the release config.json disagrees with the given config: " + "; ".join(mismatches))
    cfg.preset = cfg.preset if given else "videochat-tpo-7b"
    return TPOConfig.from_dict(cfg.to_dict())  # re-validate


def dry_run(src: str | Path, merge_lora: bool = False) -> dict:
    """Read only the index: ``{"total", "mapped", "extras": {name: reason}, "unmapped": [...]}``."""
    release = ReleaseFolder(src)
    plan = build_plan(release.names, merge_lora=merge_lora)
    return {"total": len(release.names), "mapped": plan.mapped, "extras": plan.extras, "unmapped": plan.unmapped}


def target_shape(tgt: Target, shapes: dict[str, tuple[tuple[int, ...], torch.dtype]]) -> tuple[int, ...]:
    """The shape a transform produces from its sources' shapes."""
    s = {role: shapes[name][0] for role, name in tgt.sources.items()}
    if tgt.transform == "copy":
        return s[""]
    if tgt.transform == "fuse_qkv_bias":
        return (3 * s["q"][0],)
    if tgt.transform == "cat_rows":
        return (sum(s[str(i)][0] for i in range(4)), *s["0"][1:])
    return s["base"]  # merge_lora


def apply_transform(tgt: Target, parts: dict[str, torch.Tensor], lora_scale: float) -> torch.Tensor:
    """Build one target tensor from its sources (see ``table.TRANSFORMS``)."""
    if tgt.transform == "copy":
        return parts[""]
    if tgt.transform == "fuse_qkv_bias":
        q, v = parts["q"], parts["v"]
        return torch.cat([q, torch.zeros_like(q), v])
    if tgt.transform == "cat_rows":
        return torch.cat([parts[str(i)] for i in range(4)], dim=0)
    base, a, b = parts["base"], parts["A"], parts["B"]
    delta = (b.float() @ a.float()) * lora_scale  # peft: (B @ A) * scaling
    return base.float() + delta


def _expected_state(config: TPOConfig, merge_lora: bool) -> dict[str, tuple[int, ...]]:
    from tpo_core.model import TPOModel

    with torch.device("meta"):
        model = TPOModel(config)
        if not merge_lora:
            model.llm.apply_lora()
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _check_targets(plan: Plan, shapes, config: TPOConfig, merge_lora: bool) -> dict[str, tuple[int, ...]]:
    """Target name -> shape; raise unless the targets plus the untrained heads are exactly the model's state."""
    if plan.unmapped:
        raise ValueError(f"{len(plan.unmapped)} release tensors match no conversion rule: {plan.unmapped[:8]}; "
                         "this folder is not the VideoChat-TPO release layout")
    want = _expected_state(config, merge_lora)
    got = {name: target_shape(tgt, shapes) for name, tgt in plan.targets.items()}
    untrained = [k for k in want if k.startswith(tuple(UNTRAINED_PREFIXES.values()))]
    missing = sorted(set(want) - set(got) - set(untrained))
    unexpected = sorted(set(got) - set(want))
    wrong = sorted(f"{k}: release gives {got[k]}, the config builds {want[k]}" for k in set(got) & set(want)
                   if got[k] != want[k])
    if missing or unexpected or wrong:
        raise ValueError(f"the release does not fit the tpo-edge config (preset {config.preset}): "
                         f"{len(missing)} missing {missing[:4]}, {len(unexpected)} unexpected {unexpected[:4]}, "
                         f"{len(wrong)} mis-shaped {wrong[:4]}; pass --config with a matching tpo-edge config")
    return got


def _untrained_state(config: TPOConfig, seed: int) -> dict[str, torch.Tensor]:
    """The seeded initial weights of the heads the release does not carry (the temporal head)."""
    from tpo_core.modeling.heads.temporal import TemporalHead

    torch.manual_seed(seed)
    head = TemporalHead(config.temporal, config.llm.hidden_size, config.vision.embed_dim)
    return {f"temporal_head.{k}": v.detach() for k, v in head.state_dict().items()}


def _index_hash(src: Path) -> str:
    return hashlib.sha256((src / INDEX).read_bytes()).hexdigest()


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def convert(src: str | Path, out: str | Path, precision: str = "bf16", merge_lora: bool = False,
            config: TPOConfig | None = None, seed: int = 0, log=print) -> dict:
    """Convert the release folder ``src`` into the tpo-edge checkpoint folder ``out``; returns the report."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not allowed; choose one of {sorted(PRECISIONS)}")
    t_start = time.perf_counter()
    src, out = Path(src), Path(out)
    release = ReleaseFolder(src)
    if out.resolve() == src.resolve():
        raise ValueError(f"--out {out} is the release folder itself; write the checkpoint to another folder")
    config = config_from_release(release.config(), base=config)
    tokenizer = _release_tokenizer(src)
    plan = build_plan(release.names, merge_lora=merge_lora)
    shapes = release.shapes()
    got = _check_targets(plan, shapes, config, merge_lora)
    dtype = PRECISIONS[precision]
    untrained = _untrained_state(config, seed)
    entries = {name: (shape, dtype) for name, shape in got.items()}
    entries.update({k: (tuple(v.shape), dtype) for k, v in untrained.items()})
    out.mkdir(parents=True, exist_ok=True)
    model_w = SafetensorsWriter(out / "model.safetensors", entries, {"format": "pt"})
    extras_w = SafetensorsWriter(out / EXTRAS, {n: shapes[n] for n in plan.extras}, {"format": "pt"})
    counts = _stream(release, plan, model_w, extras_w, dtype, config.llm.lora.alpha / config.llm.lora.r, log)
    for name, tensor in untrained.items():
        model_w.write(name, tensor.to(dtype))
    model_w.close()
    extras_w.close()
    config.to_json(out / "config.json")
    tokenizer.save(str(out / "tokenizer.json"))
    meta = {"format": "tpo-edge/checkpoint", "version": 1, "lora_applied": not merge_lora,
            "dtype": {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}[precision],
            "num_tensors": len(entries), "untrained_heads": sorted(UNTRAINED_PREFIXES),
            "source": {"format": SOURCE_FORMAT, "path": str(src.resolve()), "index_sha256": _index_hash(src)}}
    (out / "checkpoint.json").write_text(json.dumps(meta, indent=2) + "\n")
    report = _report(src, release, plan, precision, merge_lora, sorted(untrained), counts)
    report.update(seconds=round(time.perf_counter() - t_start, 3), peak_rss_bytes=peak_rss_bytes())
    report["peak_rss_over_weights"] = round(report["peak_rss_bytes"] / max(release.total_size, 1), 3)
    (out / REPORT).write_text(json.dumps(report, indent=1) + "\n")
    return report


def _stream(release: ReleaseFolder, plan: Plan, model_w: SafetensorsWriter, extras_w: SafetensorsWriter,
            dtype: torch.dtype, lora_scale: float, log) -> dict:
    """Shard by shard: extras verbatim, targets as soon as all their sources were read."""
    pending: dict[str, dict[str, torch.Tensor]] = {}
    counts = {"targets": 0, "extras": 0, "max_pending": 0}
    for shard in release.shards:
        t0 = time.perf_counter()
        for name, tensor in release.iter_shard(shard):
            if name in plan.extras:
                extras_w.write(name, tensor)
                counts["extras"] += 1
                continue
            for tname in plan.source_targets[name]:
                tgt = plan.targets[tname]
                role = next(r for r, n in tgt.sources.items() if n == name)
                parts = pending.setdefault(tname, {})
                parts[role] = tensor
                if len(parts) == len(tgt.sources):
                    model_w.write(tname, apply_transform(tgt, pending.pop(tname), lora_scale).to(dtype))
                    counts["targets"] += 1
            counts["max_pending"] = max(counts["max_pending"], len(pending))
            del tensor
        log(f"  {shard}: done in {time.perf_counter() - t0:.1f} s (peak RSS {peak_rss_bytes() / 2**30:.2f} GiB)")
    if pending:
        raise ReleaseFolderError(f"sources missing for {sorted(pending)[:5]} after reading every shard")
    return counts


def _release_tokenizer(src: Path):
    """The release's tokenizer as a ``tokenizers.Tokenizer`` (task tokens checked at 32000..32006)."""
    from tpo_core.data.tokenizer_build import load_tokenizer

    if not (src / "tokenizer.json").is_file() and not (src / "tokenizer.model").is_file():
        raise ReleaseFolderError(f"{src} has neither tokenizer.model nor tokenizer.json; copy the release's "
                                 "tokenizer files (tokenizer.model, added_tokens.json) beside its index")
    return load_tokenizer(str(src))


def _report(src: Path, release: ReleaseFolder, plan: Plan, precision: str, merge_lora: bool,
            untrained: list[str], counts: dict) -> dict:
    return {
        "format": SOURCE_FORMAT, "source": str(src.resolve()), "precision": precision, "merge_lora": merge_lora,
        "total": len(release.names), "mapped": plan.mapped, "extras": plan.extras, "unmapped": plan.unmapped,
        "weights_bytes": release.total_size, "targets_written": counts["targets"],
        "max_pending_targets": counts["max_pending"],
        "untrained_heads": sorted(UNTRAINED_PREFIXES), "untrained_tensors": untrained,
        "targets": {name: {"transform": t.transform, "sources": t.sources} for name, t in plan.targets.items()},
    }
