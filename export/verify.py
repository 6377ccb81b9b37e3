"""``tpo verify DIR``: every exported graph on its runtime engine against the PyTorch reference, and end to end.

1. Manifest: ``Manifest.load`` (schema, validation, every file's sha256). The reference model is rebuilt from
   the manifest's ``source`` (or ``--checkpoint``) in float32; a checkpoint whose hash changed is refused.
2. Components: for every profile at its ``min`` and ``opt`` sizes, fresh random inputs (``export.specs.
   example_inputs``) through the runtime's ONNX Runtime engine (``runtime.engines.open_engine``) and through the
   model code (the LLM against the HF Mistral forward with a ``DynamicCache``, the memory attention against the
   unpatched ``MaskHead``). Real frames of generated videos go through the runtime's ``Preprocessor`` and the
   ``vision`` / ``mask_image_encoder`` engines against ``tpo_core``'s own preprocessing and model.
3. End to end: the runtime's ``Pipeline`` (what users run) against ``TPOModel.generate`` on several generated
   videos and one question per task (each head's ``*_begin`` forced at step 0 so every head is exercised): same
   greedy tokens, same routing, head outputs within tolerance, masks agreeing on >= 99.9 % of the pixels.

Tolerance: an output passes when ``max |engine - ref| <= atol * max(1, max |ref|)`` with the component's
per-output ``atol`` from the manifest (``export.specs.ATOL``: fp32 1e-4, fp16 2e-2, bf16 8e-2); end-to-end head
outputs get ``E2E_TOLERANCE_FACTOR`` x the largest component tolerance (errors compound through the LLM). Every
failure is gathered (component, case, output, max abs / rel error) and reported together; the CLI exits 1 if
there is any.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from export.components import build_wrapper
from export.specs import example_inputs
from runtime.contract.routing import force_token
from runtime.engines import open_engine
from runtime.manifest import REQUIRED_COMPONENTS, ComponentSpec, Manifest
from tpo_core.export_specs import ComponentIO, IOSpec

QUANTIZED_PRECISIONS = ("int4", "int8")
E2E_TOLERANCE_FACTOR = 10  # end-to-end head outputs: errors of the LLM's hidden state compound into the heads
MASK_PIXEL_AGREEMENT = 0.999  # fraction of mask pixels that must agree end to end
QUESTIONS = (("What happens in the video?", None), ("Where is the {obj}?", "<box_begin>"),
             ("When does the {obj} appear?", "<time_begin>"), ("Track the {obj}.", "<track_begin>"))


@dataclass
class Failure:
    component: str
    case: str
    output: str
    max_abs: float
    max_rel: float
    allowed: float
    note: str = ""

    def __str__(self) -> str:
        return (f"{self.component} [{self.case}] {self.output}: max abs {self.max_abs:.3g} (rel {self.max_rel:.3g}) "
                f"> allowed {self.allowed:.3g}{' - ' + self.note if self.note else ''}")


@dataclass
class VerifyReport:
    folder: str
    precision: str
    checks: int = 0
    failures: list[Failure] = field(default_factory=list)
    worst: dict[str, float] = field(default_factory=dict)  # "component.output" -> worst abs error seen
    e2e: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}

    def summary(self) -> str:
        lines = [f"tpo verify {self.folder} ({self.precision}): {self.checks} checks, {len(self.failures)} failure(s), "
                 f"{len(self.e2e)} end-to-end cases, {self.seconds:.1f}s"]
        lines += [f"  FAIL {f}" for f in self.failures]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _engine_feeds(inputs: dict[str, torch.Tensor], device: str) -> dict:
    """Torch inputs -> what an engine on ``device`` takes (numpy on the CPU, torch tensors on CUDA)."""
    if device == "cpu":
        return {k: v.detach().cpu().numpy() for k, v in inputs.items()}
    return {k: v.detach().to(device).contiguous() for k, v in inputs.items()}


def _host(outputs: dict) -> dict[str, np.ndarray]:
    return {k: v if isinstance(v, np.ndarray) else v.detach().float().cpu().numpy() if v.is_floating_point()
            else v.detach().cpu().numpy() for k, v in outputs.items()}


def io_from_manifest(name: str, spec: ComponentSpec) -> ComponentIO:
    """The manifest's typed IO as a ``ComponentIO`` (so inputs are generated from what the runtime reads)."""
    def conv(ts):
        return tuple(IOSpec(t.name, t.dtype, tuple(t.dims), t.doc) for t in ts)

    return ComponentIO(name, conv(spec.inputs), conv(spec.outputs),
                       {p: {d: tuple(r) for d, r in ranges.items()} for p, ranges in spec.profiles.items()})


def compare(report: VerifyReport, component: str, case: str, names: list[str], got: dict[str, np.ndarray],
            ref: list[torch.Tensor], tolerance: dict[str, float], default_atol: float = 1e-4) -> None:
    """Gather a ``Failure`` for every output outside its tolerance (shape mismatches included)."""
    for name, r in zip(names, ref):
        report.checks += 1
        r = r.detach().float().cpu().numpy() if r.is_floating_point() else r.detach().cpu().numpy()
        g = got[name]
        if g.shape != r.shape:
            report.failures.append(Failure(component, case, name, float("inf"), float("inf"), 0.0,
                                           f"shape {g.shape} != reference {r.shape}"))
            continue
        if r.dtype == np.bool_ or np.issubdtype(r.dtype, np.integer):
            bad = int((g != r).sum())
            if bad:
                report.failures.append(Failure(component, case, name, float(bad), 1.0, 0.0, f"{bad} elements differ"))
            continue
        g = g.astype(np.float32)
        if not np.isfinite(g).all():
            report.failures.append(Failure(component, case, name, float("nan"), float("nan"), 0.0, "non-finite"))
            continue
        err = float(np.abs(g - r).max()) if r.size else 0.0
        scale = max(1.0, float(np.abs(r).max()) if r.size else 1.0)
        allowed = tolerance.get(name, default_atol) * scale
        key = f"{component}.{name}"
        report.worst[key] = max(report.worst.get(key, 0.0), err)
        if err > allowed:
            report.failures.append(Failure(component, case, name, err, err / scale, allowed))


# ------------------------------------------------------------------------------------------- references
def _hf_cache(past: list[torch.Tensor]):
    from transformers import DynamicCache

    cache = DynamicCache()
    if past and past[0].shape[2] > 0:
        for i in range(len(past) // 2):
            cache.update(past[2 * i], past[2 * i + 1], i)
    return cache


def reference_outputs(name: str, model, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """The model-code outputs for a component's inputs (float32 model; the LLM through HF's own forward)."""
    with torch.no_grad():
        if name == "llm":
            from export.llm_graph import cache_to_list

            past = [v for k, v in inputs.items() if k.startswith("past_")]
            logits, hidden, cache = model.llm(inputs["inputs_embeds"], attention_mask=inputs["attention_mask"],
                                              past_key_values=_hf_cache(past), position_ids=inputs["position_ids"],
                                              use_cache=True)
            return [logits[:, -1].float(), hidden, *cache_to_list(cache)]
        if name == "mask_memory_attention":
            from tpo_core.modeling.heads.mask import MemoryState

            state = MemoryState(*(inputs[k] for k in ("memory", "memory_pos", "memory_offsets", "memory_valid",
                                                      "pointers", "pointer_offsets", "pointer_valid")))
            return [model.mask_head.memory_attention(inputs["embedding"], inputs["embedding_pos"], state)]
        wrapper = build_wrapper(name, model, torch.float32)
        out = wrapper(*inputs.values())  # spec order
        return list(out) if isinstance(out, (tuple, list)) else [out]


def _bindings(cio: ComponentIO) -> dict[str, dict[str, int]]:
    """Shape cases: every profile at its min and opt sizes (``past`` and ``total`` kept consistent)."""
    cases = {}
    for pname, ranges in cio.profiles.items():
        for k, label in ((0, "min"), (1, "opt")):
            sizes = {d: r[k] for d, r in ranges.items()}
            if "total" in sizes:
                sizes["total"] = sizes.get("past", 0) + sizes.get("seq", 0)
            cases[f"{pname}:{label}"] = sizes
    return cases


def verify_gqa_llm(report: VerifyReport, manifest: Manifest, model, device: str = "cpu", seed: int = 0) -> None:
    """The GQA LLM graph through the runtime's ``OrtLLM`` (shared KV buffer) vs the HF forward with a cache: a
    9-token prefill then 3 decode steps; hidden states of every step and the last logits."""
    from runtime.engines.ort_llm import OrtLLM

    spec = manifest.components["llm"]
    d = manifest.kv.hidden_size
    x = torch.randn(1, 12, d, generator=torch.Generator().manual_seed(seed))
    llm = OrtLLM.from_manifest(manifest, device=device)
    got_h, ref_h = [], []
    with torch.no_grad():
        _, h0, cache = model.llm(x[:, :9], use_cache=True)
        ref_h.append(h0)
        for t in range(9, 12):
            logits, h, cache = model.llm(x[:, t:t + 1], past_key_values=cache, use_cache=True)
            ref_h.append(h)
    for start, end in ((0, 9), (9, 10), (10, 11), (11, 12)):
        lg, h, _ = llm.append(x[:, start:end].numpy() if device == "cpu" else x[:, start:end])
        got_h.append(_host({"h": h})["h"].copy())
    got = {"hidden_states": np.concatenate(got_h)[None], "logits": _host({"l": lg})["l"][None]}
    ref = [torch.cat(ref_h, 1), logits[:, -1].float()]
    if spec.precision in QUANTIZED_PRECISIONS:  # weight-only int4/int8: no elementwise tolerance; report agreement
        a, b = got["logits"].ravel().astype(np.float64), ref[1].numpy().ravel().astype(np.float64)
        cos = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))
        report.notes.append(f"llm ({spec.precision}): last-step logits cosine {cos:.4f} vs the float32 model, argmax "
                            f"{'equal' if int(a.argmax()) == int(b.argmax()) else 'differs'} (quality: "
                            "scripts/llm_quality.py)")
        return
    compare(report, "llm", "gqa prefill 9 + decode 3", ["hidden_states", "logits"], got, ref, spec.tolerance)


def verify_components(report: VerifyReport, manifest: Manifest, model, device: str = "cpu", seed: int = 0) -> None:
    """Every component on its runtime engine (opened one at a time) vs the model code, at each profile's corners
    (the GQA LLM graph through the runtime's OrtLLM, see :func:`verify_gqa_llm`)."""
    for name, spec in manifest.components.items():
        if name == "llm" and manifest.kv.graph == "gqa":
            verify_gqa_llm(report, manifest, model, device, seed)
            continue
        cio = io_from_manifest(name, spec)
        with open_engine(manifest, name, backend="ort", device=device) as engine:
            for case, sizes in _bindings(cio).items():
                inputs = example_inputs(cio, manifest.precision, sizes, seed=seed)
                got = _host(engine.run(_engine_feeds(inputs, device)))
                ref_in = {k: (v.float() if v.is_floating_point() else v) for k, v in inputs.items()}
                ref = reference_outputs(name, model, ref_in)
                compare(report, name, f"random {case}", [t.name for t in spec.outputs], got, ref, spec.tolerance)


def verify_real_frames(report: VerifyReport, pipe, model, clips: list) -> None:
    """``vision`` and ``mask_image_encoder`` on real decoded frames through the runtime's preprocessing and engines
    vs ``tpo_core``'s preprocessing + model."""
    from tpo_core.data.video import preprocess_frames

    cfg, m = model.config, pipe.manifest
    for clip in clips:
        name = Path(clip.path).name
        frames = pipe.ops.asarray(pipe.preprocessor.vision(clip.frames), pipe._input_dtype("vision", "frames"))
        got = _host(pipe.engines["vision"].run({"frames": frames}))
        pixels = preprocess_frames(clip.frames, cfg.vision.img_size, cfg.vision.mean, cfg.vision.std,
                                   mode=cfg.vision.resize)
        with torch.no_grad():
            ref = list(model.encode_video_patches(pixels[None]))  # visual, frame features, patch tokens
        names = [t.name for t in m.components["vision"].outputs]  # patch_tokens only for a pointer-head export
        compare(report, "vision", f"frames of {name}", names, got, ref[:len(names)], m.components["vision"].tolerance)
        two = clip.frames[:2]
        px = pipe.ops.asarray(pipe.preprocessor.mask(two), pipe._input_dtype("mask_image_encoder", "pixels"))
        got = _host(pipe.engines["mask_image_encoder"].run({"pixels": px}))
        with torch.no_grad():
            f = model.mask_head.encode_image(model.mask_head.preprocess(torch.as_tensor(two)))
        spec = m.components["mask_image_encoder"]
        compare(report, "mask_image_encoder", f"frames of {name}", [t.name for t in spec.outputs], got,
                [f.feat_s0, f.feat_s1, f.embedding, f.embedding_pos], spec.tolerance)


def _compare_heads(report: VerifyReport, case: str, ref, got, tol: float) -> None:
    if ref.region is not None and got.region is not None:
        compare(report, "e2e.head_region", case, ["box"], {"box": np.asarray(got.region.box_normalized)},
                [torch.tensor(ref.region.box_normalized)], {"box": tol})
    if ref.temporal is not None and got.temporal is not None:
        compare(report, "e2e.head_temporal", case, ["saliency"], {"saliency": got.temporal.saliency},
                [torch.as_tensor(ref.temporal.saliency)], {"saliency": tol})
    if ref.mask is not None and got.mask is not None:
        compare(report, "e2e.mask", case, ["object_scores"], {"object_scores": got.mask.object_scores},
                [torch.as_tensor(ref.mask.object_scores)], {"object_scores": tol})
        agree = float((got.mask.masks == ref.mask.masks).mean()) if got.mask.masks.shape == ref.mask.masks.shape \
            else 0.0
        report.checks += 1
        if agree < MASK_PIXEL_AGREEMENT:
            report.failures.append(Failure("e2e.mask", case, "masks", 1 - agree, 1 - agree, 1 - MASK_PIXEL_AGREEMENT,
                                           f"pixel agreement {agree:.4f}"))


def verify_end_to_end(report: VerifyReport, pipe, model, clips: list) -> None:
    """Greedy tokens and head outputs of the runtime ``Pipeline`` vs ``TPOModel.generate``, per video and question."""
    m = pipe.manifest
    ids = {k: v.id for k, v in m.task_tokens.items()}
    tol = E2E_TOLERANCE_FACTOR * max(max(c.tolerance.values(), default=1e-4) for c in m.components.values())
    strict = m.precision == "fp32"
    for clip in clips:
        for question, forced in QUESTIONS:
            q = question.format(obj="object")
            proc = force_token(ids[forced]) if forced else None
            ref = model.generate(clip, q, logits_processor=proc)
            got = pipe.ask(clip, q, logits_processor=proc)
            case = f"{Path(clip.path).name}: {q!r}"
            same = got.token_ids == ref.token_ids
            report.e2e.append({"case": case, "tokens_equal": same, "tasks": got.tasks, "tokens": len(got.token_ids)})
            report.checks += 1
            if not same:
                first = next((i for i, (a, b) in enumerate(zip(got.token_ids, ref.token_ids)) if a != b),
                             min(len(got.token_ids), len(ref.token_ids)))
                msg = (f"greedy tokens differ from step {first}: runtime {got.token_ids[:first + 3]} vs "
                       f"torch {ref.token_ids[:first + 3]}")
                if strict:
                    report.failures.append(Failure("e2e.llm", case, "token_ids", 1.0, 1.0, 0.0, msg))
                else:
                    report.notes.append(f"{case}: {msg} ({m.precision} vs float32 reference)")
                continue
            if got.tasks != ref.tasks:
                report.failures.append(Failure("e2e.routing", case, "tasks", 1.0, 1.0, 0.0,
                                               f"runtime {got.tasks} vs torch {ref.tasks}"))
                continue
            _compare_heads(report, case, ref, got, tol)


# ------------------------------------------------------------------------------------------- entry point
def reference_model(manifest: Manifest, checkpoint: str | None = None):
    """Rebuild the float32 reference the manifest was exported from (refusing a changed checkpoint)."""
    from export.exporter import load_source

    src = manifest.source
    spec = checkpoint or src.checkpoint
    if spec == "in-memory":
        raise ValueError("the manifest was exported from an in-memory model; pass --checkpoint DIR (or give "
                         "verify_export a model)")
    model, source = load_source(spec, torch.float32)
    if src.sha256 and source.get("sha256") and src.sha256 != source["sha256"]:
        raise ValueError(f"checkpoint {spec} has sha256 {source['sha256'][:12]}..., but the export was made from "
                         f"{src.sha256[:12]}...; pass the checkpoint that was exported or re-export")
    if src.config != json.loads(json.dumps(source["config"])):
        raise ValueError(f"checkpoint {spec} has another config than the export's source; pass the right one")
    if src.tokenizer_sha256 and src.tokenizer_sha256 != source.get("tokenizer_sha256"):
        raise ValueError(f"the tokenizer of {spec} changed since the export (sha256 differs from the manifest's "
                         "source.tokenizer_sha256); re-export, or pass the checkpoint that was exported")
    return model


def make_videos(folder: Path, count: int, seed: int = 1234) -> list[Path]:
    """Generate ``count`` synthetic videos (tpo_core.data.synth) into ``folder``; returns their paths."""
    from tpo_core.data.synth import generate

    generate(folder, count, seed, split="val", mask_mode="rle", overwrite=True)
    return sorted((folder / "videos").glob("*.mp4"))


def verify_export(folder: str | Path, checkpoint: str | None = None, model=None, videos: int = 2, seed: int = 0,
                  device: str = "cpu", e2e: bool = True) -> VerifyReport:
    """Run every check on the export in ``folder``; returns the report (``report.ok``).

    A partial export (``tpo export --components ...``) gets the component checks only.
    """
    from runtime.pipeline import Pipeline
    from tpo_core.data.video import read_video

    t0 = time.perf_counter()
    manifest = Manifest.load(folder, require_all=False)
    report = VerifyReport(str(folder), manifest.precision)
    model = model if model is not None else reference_model(manifest, checkpoint)
    model = model.float().eval()
    verify_components(report, manifest, model, device, seed)
    complete = set(REQUIRED_COMPONENTS) <= set(manifest.components)
    if not complete:
        report.notes.append("partial export: component checks only (no real-frame or end-to-end checks)")
    elif videos > 0:
        with tempfile.TemporaryDirectory(prefix="tpo-verify-") as tmp, Pipeline(manifest, "ort", device) as pipe:
            clips = [read_video(p, model.config.vision.num_frames) for p in make_videos(Path(tmp), videos)]
            verify_real_frames(report, pipe, model, clips)
            if e2e:
                verify_end_to_end(report, pipe, model, clips)
    report.seconds = time.perf_counter() - t0
    return report


def run_verify(args) -> int:
    report = verify_export(args.dir, checkpoint=args.checkpoint, videos=args.videos, device=args.device,
                           e2e=not args.no_e2e)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.summary())
    return 0 if report.ok else 1


__all__ = ["Failure", "VerifyReport", "compare", "verify_export", "reference_model", "run_verify"]
