"""``tpo verify DIR``: every exported graph in ONNX Runtime against the PyTorch reference, and end to end.

1. Manifest: ``Manifest.load`` (schema, validation, every file's sha256). The reference model is rebuilt from
   the manifest's ``source`` (or ``--checkpoint``) in float32; a checkpoint whose hash changed is refused.
2. Components: for every profile at its ``min`` and ``opt`` sizes, fresh random inputs (``export.specs.
   example_inputs``) through ONNX Runtime and through the model code (the LLM against the HF Mistral forward
   with a ``DynamicCache``, the memory attention against the unpatched ``MaskHead``). Real frames of generated
   videos go through ``vision`` and ``mask_image_encoder`` against ``tpo_core``'s own preprocessing.
3. End to end (``export.verify_loop``): greedy decoding through the ONNX LLM driven only by the manifest
   (tokenizer file, prompt template, embedding table, task-embedding splice, placeholder forcing) must give
   the tokens of ``TPOModel.generate``, and the heads' outputs must match, on several generated videos.

Tolerance: an output passes when ``max |onnx - ref| <= atol * max(1, max |ref|)`` with the component's
per-output ``atol`` from the manifest (fp32 1e-4, fp16 2e-2, bf16 8e-2). Every failure is gathered (component,
case, output, max abs / rel error) and reported together; the CLI exits 1 if there is any.
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
from export.specs import TORCH_DTYPES, example_inputs
from runtime.manifest import ComponentSpec, Manifest
from tpo_core.export_specs import ComponentIO, IOSpec

NP_DTYPES = {"float32": np.float32, "float16": np.float16, "int64": np.int64, "int32": np.int32, "bool": np.bool_,
             "uint8": np.uint8}


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


class Graphs:
    """ONNX Runtime sessions of an export folder, opened on first use; ``run`` checks IO names and dtypes."""

    def __init__(self, manifest: Manifest, provider: str = "CPUExecutionProvider"):
        self.manifest, self.provider, self._sessions = manifest, provider, {}

    def session(self, name: str):
        import onnxruntime as ort

        if name not in self._sessions:
            spec = self.manifest.components[name]
            if spec.precision == "bf16" and self.provider == "CPUExecutionProvider":
                raise RuntimeError(f"{name}: ONNX Runtime's CPU provider has no bfloat16 kernels; verify a bf16 "
                                   "export on a GPU (--provider CUDAExecutionProvider) or export fp16/fp32 here")
            opts = ort.SessionOptions()
            opts.log_severity_level = 3
            self._sessions[name] = ort.InferenceSession(str(self.manifest.path_of(spec.file)), opts,
                                                        providers=[self.provider])
        return self._sessions[name]

    def run(self, name: str, feeds: dict) -> dict[str, np.ndarray]:
        spec = self.manifest.components[name]
        arrays = {}
        for t in spec.inputs:
            if t.name not in feeds:
                raise KeyError(f"{name}: missing input {t.name!r}")
            value = feeds[t.name]
            value = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
            arrays[t.name] = value.astype(NP_DTYPES[t.dtype], copy=False)
        outs = self.session(name).run([t.name for t in spec.outputs], arrays)
        return dict(zip([t.name for t in spec.outputs], outs))


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


def verify_components(report: VerifyReport, manifest: Manifest, graphs: Graphs, model, seed: int = 0) -> None:
    for name, spec in manifest.components.items():
        cio = io_from_manifest(name, spec)
        for case, sizes in _bindings(cio).items():
            inputs = example_inputs(cio, manifest.precision, sizes, seed=seed)
            got = graphs.run(name, inputs)
            ref_in = {k: (v.float() if v.is_floating_point() else v) for k, v in inputs.items()}
            ref = reference_outputs(name, model, ref_in)
            compare(report, name, f"random {case}", [t.name for t in spec.outputs], got, ref, spec.tolerance)


def verify_real_frames(report: VerifyReport, manifest: Manifest, graphs: Graphs, model, videos: list[Path]) -> None:
    """vision and mask_image_encoder on real decoded frames vs tpo_core's preprocessing + model."""
    from export.verify_loop import mask_pixels, vision_frames
    from tpo_core.data.video import preprocess_frames, read_video

    cfg = model.config
    for path in videos:
        clip = read_video(path, cfg.vision.num_frames)
        got = graphs.run("vision", {"frames": vision_frames(manifest, clip.frames)})
        pixels = preprocess_frames(clip.frames, cfg.vision.img_size, cfg.vision.mean, cfg.vision.std,
                                   mode=cfg.vision.resize)
        with torch.no_grad():
            ref = list(model.encode_video(pixels[None]))
        spec = manifest.components["vision"]
        compare(report, "vision", f"frames of {path.name}", ["visual_tokens", "frame_features"], got, ref,
                spec.tolerance)
        frames = clip.frames[:2]
        got = graphs.run("mask_image_encoder", {"pixels": mask_pixels(manifest, frames)})
        with torch.no_grad():
            f = model.mask_head.encode_image(model.mask_head.preprocess(torch.as_tensor(frames)))
        spec = manifest.components["mask_image_encoder"]
        compare(report, "mask_image_encoder", f"frames of {path.name}", [t.name for t in spec.outputs], got,
                [f.feat_s0, f.feat_s1, f.embedding, f.embedding_pos], spec.tolerance)


# ------------------------------------------------------------------------------------------- entry point
def reference_model(manifest: Manifest, checkpoint: str | None = None):
    """Rebuild the float32 reference the manifest was exported from (refusing a changed checkpoint)."""
    from export.exporter import load_source

    src = manifest.source
    spec = checkpoint or src.get("checkpoint")
    if spec in (None, "in-memory"):
        raise ValueError("the manifest was exported from an in-memory model; pass --checkpoint DIR (or give "
                         "verify_export a model)")
    model, source = load_source(spec, torch.float32)
    if src.get("sha256") and source.get("sha256") and src["sha256"] != source["sha256"]:
        raise ValueError(f"checkpoint {spec} has sha256 {source['sha256'][:12]}..., but the export was made from "
                         f"{src['sha256'][:12]}...; pass the checkpoint that was exported or re-export")
    if src.get("config") and src["config"] != json.loads(json.dumps(source["config"])):
        raise ValueError(f"checkpoint {spec} has another config than the export's source; pass the right one")
    if src.get("tokenizer_sha256") and src["tokenizer_sha256"] != source.get("tokenizer_sha256"):
        raise ValueError(f"the tokenizer of {spec} changed since the export (sha256 differs from the manifest's "
                         "source.tokenizer_sha256); re-export, or pass the checkpoint that was exported")
    return model


def make_videos(folder: Path, count: int, seed: int = 1234) -> list[Path]:
    """Generate ``count`` synthetic videos (tpo_core.data.synth) into ``folder``; returns their paths."""
    from tpo_core.data.synth import generate

    generate(folder, count, seed, split="val", mask_mode="rle", overwrite=True)
    return sorted((folder / "videos").glob("*.mp4"))


def verify_export(folder: str | Path, checkpoint: str | None = None, model=None, videos: int = 2, seed: int = 0,
                  provider: str = "CPUExecutionProvider", e2e: bool = True) -> VerifyReport:
    """Run every check on the export in ``folder``; returns the report (``report.ok``)."""
    from export.verify_loop import verify_end_to_end

    t0 = time.perf_counter()
    manifest = Manifest.load(folder)
    report = VerifyReport(str(folder), manifest.precision)
    model = model if model is not None else reference_model(manifest, checkpoint)
    model = model.float().eval()
    graphs = Graphs(manifest, provider)
    verify_components(report, manifest, graphs, model, seed)
    with tempfile.TemporaryDirectory(prefix="tpo-verify-") as tmp:
        paths = make_videos(Path(tmp), videos) if videos > 0 else []
        verify_real_frames(report, manifest, graphs, model, paths)
        if e2e:
            verify_end_to_end(report, manifest, graphs, model, paths)
    report.seconds = time.perf_counter() - t0
    return report


def run_verify(args) -> int:
    report = verify_export(args.dir, checkpoint=args.checkpoint, videos=args.videos, provider=args.provider,
                           e2e=not args.no_e2e)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.summary())
    return 0 if report.ok else 1


__all__ = ["Failure", "VerifyReport", "Graphs", "compare", "verify_export", "reference_model", "run_verify",
           "TORCH_DTYPES"]
