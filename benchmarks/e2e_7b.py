"""The whole 7B-shape pipeline end to end on one GPU (random weights, every component), in phases.

1. **Export** (CPU work, on the GPU machine's host): the ``videochat-tpo-7b`` preset built on ``meta`` and
   materialized once, directly in the export precision, with seeded random weights (one generator per part: any
   phase rebuilds exactly the same weights), then every component exported through ``export.exporter.
   export_model`` (``--llm-graph gqa`` by default: the GroupQueryAttention graph ``Pipeline`` drives through
   ``OrtLLM``; ``plain``: the past/present graph). At 7B the LLM graph alone takes ~5 min (docs/export.md: 308 s
   for the plain graph on the H100 host), so it is its own phase: ``export-llm`` writes ``STATE/llm_part``,
   ``export-rest`` exports the other nine graphs into ``STATE/export``, moves the LLM files in and writes the
   merged manifest (then ``Manifest.load`` re-checks every file hash). ``--export DIR`` reuses any export folder
   instead (e.g. ``scripts/convert_fullsize.py``'s).
2. **Bench** (one process, one GPU; ``Pipeline`` on ORT, ``device="cuda"``): a generated 1080p H.264 clip
   (``--clip-seconds`` at 30 fps, keyframe every ``--gop`` frames); medians over ``--reps`` after ``--warmup``.

   - *Time to first answer*: ``Pipeline.ask`` on the file: read the 16 sampled frames -> preprocess -> vision ->
     prefill -> first token (wall clock, when the first chosen token is fed back), then to the end of a
     ``--tokens``-token answer; per stage from ``TPOResult.timings_ms`` (each stage ends with a device sync).
     Two video paths through the same ``Pipeline`` (``set_video_path``): ``device`` (what it does on CUDA:
     NVDEC into GPU memory via ``runtime.video_gpu``, decord + upload as the fallback, fused Triton
     preprocessing) and ``host`` (what it does on a CPU machine: decord + numpy preprocessing). Then one answer
     per head with the task forced at step 0 (``force_token``): region, temporal, and mask (``<track_begin>``:
     the SAM2-L head tracks all 16 frames and decodes them at 1080p). The PyTorch reference
     (``TPOModel.generate``, eager, same weights) answers the same question on the same clip.
   - *One tracked mask frame at 1080p* (``benchmarks/e2e_mask.py``): our mask engines vs transformers'
     ``Sam2VideoModel`` eager (same SAM2-L modules: same config and, for our own random export, same weights) in
     ``--hf-dtypes``, steady state with a full memory bank.

   Prints the tables with ratios and writes ``OUT/e2e_7b_<gpu>.json`` (``--out``, default ``$OUT`` or
   ``benchmarks/results``) with the device, versions and the command.

GPU machine (each command < 10 min; state in ``--state`` between back-to-back commands; carry the wheels of
docs/video_gpu.md into /tmp/site)::

    python benchmarks/e2e_7b.py --phase export-llm      # ~5.5-6.5 min EST (LLM graph, 14.2 GB)
    python benchmarks/e2e_7b.py --phase export-rest     # ~2-4 min EST (9 graphs, tensors, merged manifest)
    python benchmarks/e2e_7b.py --phase bench           # ~3-5 min EST (load ~1.5 min, answers, mask peers)

CPU plumbing at the tiny size (seconds)::

    python benchmarks/e2e_7b.py --preset tiny --device cpu --phase all --exporter torchscript --state /tmp/e2e
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import sys
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402,I001  (before onnxruntime: it loads the CUDA libraries onnxruntime-gpu links against)
import numpy as np  # noqa: E402

from e2e_mask import make_sync, mask_comparison, ratio_rows, stats  # noqa: E402
from runtime.pipeline import Pipeline  # noqa: E402

PARTS = ("vision", "connector", "llm", "region_head", "temporal_head", "mask_head")
PHASES = ("export", "export-llm", "export-rest", "bench", "all")
FORCED = {"region": "<box_begin>", "temporal": "<time_begin>", "mask": "<track_begin>"}
PROMPT = "Describe what happens in the video in detail."
FIXTURE_TOKENIZER = ROOT / "tests" / "fixtures" / "videochat_tpo"  # the release's Mistral v0.2 tokenizer.model


# ------------------------------------------------------------------------------------------------ model
def build_random(preset: str, precision: str, seed: int = 0, parts=PARTS, layers: int | None = None,
                 device: str = "cpu"):
    """TPOModel of ``preset`` with seeded random weights in ``precision``, built on ``meta`` and materialized part by
    part in place on ``device`` (one copy of the weights). Each part has its own generator (``seed`` + crc32 of its
    name), so rebuilding a subset, or on another device, gives the same tensors. Normal(0, 0.02) tiles (finite,
    non-degenerate), norm weights 1, biases 0. Only ``parts`` are materialized; the rest stays on ``meta``."""
    from export.exporter import fill_random, restore_buffers
    from export.specs import check_precision
    from tpo_core.config import get_preset
    from tpo_core.data.tokenizer_build import load_tokenizer
    from tpo_core.model import TPOModel

    cfg = get_preset(preset)
    if layers:
        cfg.llm.num_layers = layers
    spec = cfg.llm.tokenizer if cfg.llm.tokenizer == "embedded-tiny" else str(FIXTURE_TOKENIZER)
    with torch.device("meta"):
        model = TPOModel(cfg, load_tokenizer(spec))
    model = model.to(check_precision(precision))
    for part in parts:
        module = getattr(model, part).to_empty(device=device)
        setattr(model, part, module)
        gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(part.encode()))
        fill_random(module, gen, _fill_tiled)
    restore_buffers(model, force=True, allow_meta=set(parts) != set(PARTS))
    for part in parts:  # restore_buffers recomputes buffers on the CPU
        setattr(model, part, getattr(model, part).to(device))
    return model.eval()


def _fill_tiled(t: torch.Tensor, gen: torch.Generator, block: int = 1 << 22) -> None:
    flat = t.view(-1)
    tile = torch.randn(min(block, flat.numel()), generator=gen).mul_(0.02).to(t.dtype).to(t.device)
    for i in range(0, flat.numel(), tile.numel()):
        n = min(tile.numel(), flat.numel() - i)
        flat[i:i + n].copy_(tile[:n])


def source_of(model, preset: str, seed: int) -> dict:
    from export.exporter import tokenizer_hash

    return {"checkpoint": f"random:{preset}:seed{seed}", "sha256": None, "preset": preset,
            "config": model.config.to_dict(), "tokenizer_sha256": tokenizer_hash(model.tokenizer)}


# ------------------------------------------------------------------------------------------------ export
def export_parts(args, components: list[str] | None, out: Path) -> dict:
    """Build the random model and export ``components`` (None: all) into ``out`` (replaced)."""
    from export.exporter import export_model, peak_rss_mb

    t0 = time.perf_counter()
    model = build_random(args.preset, args.precision, args.seed, layers=args.layers)
    built_s = time.perf_counter() - t0
    print(f"[e2e] built {args.preset} ({args.precision}, seed {args.seed}) in {built_s:.1f}s, "
          f"peak RSS {peak_rss_mb() / 1024:.1f} GB", flush=True)
    shutil.rmtree(out, ignore_errors=True)
    export_model("in-memory", out, precision=args.precision, components=components, model=model,
                 source=source_of(model, args.preset, args.seed), exporter=args.exporter, llm_graph=args.llm_graph)
    rec = {"components": components or "all", "build_s": built_s, "seconds": time.perf_counter() - t0,
           "peak_rss_gb": peak_rss_mb() / 1024}
    (out / "e2e_phase.json").write_text(json.dumps(rec, indent=1) + "\n")
    return rec


def merge_llm_part(part: Path, out: Path) -> None:
    """Move ``part``'s LLM graph files into ``out`` and write one manifest: ``part``'s (its ``kv`` and ``source``
    describe the LLM graph) with ``out``'s components added. Both parts wrote the tensors from the same seeded
    weights: a differing hash is an error."""
    import dataclasses

    from runtime.manifest import Manifest

    m_llm = Manifest.load(part, verify_hashes=False, require_all=False)
    m_rest = Manifest.load(out, verify_hashes=False, require_all=False)
    differ = [n for n, t in m_llm.tensors.items() if m_rest.tensors[n].sha256 != t.sha256]
    if differ or m_llm.tokenizer.sha256 != m_rest.tokenizer.sha256:
        raise ValueError(f"the two export phases wrote different tensors {differ} (or tokenizers): they were not built "
                         "from the same preset/seed/precision; rerun both phases with the same arguments")
    spec = m_llm.components["llm"]
    for name in (spec.file, spec.external_data):
        if name:
            shutil.move(str(part / name), str(out / name))
    merged = dataclasses.replace(m_llm, components={**m_rest.components, "llm": spec}, root=None)
    merged.save(out)
    Manifest.load(out)  # every hash, every required component
    reports = [json.loads((d / "export_report.json").read_text()) for d in (part, out)]
    phases = [json.loads((d / "e2e_phase.json").read_text()) for d in (part, out)]
    (out / "export_report.json").write_text(json.dumps(
        {"seconds": sum(r["seconds"] for r in reports), "peak_rss_mb": max(r["peak_rss_mb"] for r in reports),
         "components": {**reports[1]["components"], **reports[0]["components"]}, "phases": phases}, indent=2) + "\n")
    shutil.rmtree(part, ignore_errors=True)


def run_export_phase(args, phase: str, state: Path) -> dict:
    from tpo_core.export_specs import component_io

    export, part = state / "export", state / "llm_part"
    if phase == "export":
        return export_parts(args, None, export)
    if phase == "export-llm":
        return export_parts(args, ["llm"], part)
    if not (part / "manifest.json").is_file():
        raise ValueError(f"{part} holds no LLM export; run --phase export-llm first (same --state)")
    from tpo_core.config import get_preset

    rest = [c for c in component_io(get_preset(args.preset)) if c != "llm"]
    rec = export_parts(args, rest, export)
    t0 = time.perf_counter()
    merge_llm_part(part, export)
    rec["merge_s"] = time.perf_counter() - t0
    return rec


# ------------------------------------------------------------------------------------------------ video
def write_clip(path: Path, seconds: float, fps: int, hw: tuple[int, int], gop: int) -> Path:
    """An H.264 (libx264, yuv420p, CRF 20) clip of moving smooth patterns over a fixed texture (PyAV)."""
    from fractions import Fraction

    import av

    if path.is_file():
        return path
    h, w = hw
    rng = np.random.default_rng(0)
    texture = rng.integers(-24, 25, (h, w, 3), dtype=np.int16)
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    tmp = path.with_suffix(".tmp.mp4")
    with av.open(str(tmp), "w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": "20", "preset": "ultrafast", "g": str(gop)} if codec == "libx264" else {}
        for i in range(int(seconds * fps)):
            base = 127 + 100 * np.sin(xx / 61.0 + yy / 37.0 + i / 9.0)
            rgb = np.stack([base, np.roll(base, 7 * i, axis=1), 255 - base], -1) + texture
            frame = av.VideoFrame.from_ndarray(np.clip(rgb, 0, 255).astype(np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    tmp.rename(path)
    return path


def set_video_path(pipe, path: str) -> None:
    """Switch the shipped ``Pipeline``'s video path (every stage after it is the same ``Pipeline.ask``).

    ``device``: what ``Pipeline`` does on CUDA: a file is decoded into GPU memory (``runtime.video_gpu.
    read_clip_cuda``: NVDEC, else decord + one upload) and preprocessed there by the fused Triton kernels
    (``pipe.device_pre``). ``host``: what it does on a CPU machine (``device_pre = None``): decord, numpy
    preprocessing, one upload of the float frames. On the CPU (tests) ``device`` runs the kernels in Triton's
    interpreter on CPU tensors (``TRITON_INTERPRET=1``)."""
    if not hasattr(pipe, "_e2e_device_pre"):
        pre = pipe.device_pre
        if pre is None:
            from runtime.kernels.preprocess_triton import DevicePreprocessor

            pre = DevicePreprocessor(pipe.preprocessor, getattr(torch, pipe._input_dtype("vision", "frames")),
                                     getattr(torch, pipe._input_dtype("mask_image_encoder", "pixels")))
        pipe._e2e_device_pre = pre
    pipe.device_pre = pipe._e2e_device_pre if path == "device" else None


def decoder_of(pipe, video: str) -> str:
    """Which decoder the pipeline's clip reader uses for ``video`` (read once, untimed)."""
    clip = pipe.load_clip(video)
    return f"{clip.decoder}{'/' + clip.strategy if clip.strategy else ''}" if hasattr(clip, "decoder") else "decord"


# ------------------------------------------------------------------------------------------------ answers
def time_answers(pipe, video: str, prompt: str, reps: int, warmup: int, tokens: int, force: str | None = None) -> dict:
    """``Pipeline.ask`` ``warmup + reps`` times -> medians of the wall clocks and of every ``timings_ms`` stage.

    First token (wall) = when the generator is first fed the chosen token (no logits processor on the measured
    answers: on the GQA graph one would copy every step's logits to the host); the end of the answer if there is
    no second step. Forced answers use ``force_token`` as a logits processor and report only their wall clock."""
    from runtime.contract.routing import force_token

    sync, runs, last = make_sync(pipe.device), [], None
    forced = force_token(pipe.manifest.task_tokens[force].id) if force else None
    gen = pipe.generator
    for i in range(warmup + reps):
        mark: dict[str, float] = {}

        def first_feed(token, mark=mark, feed=type(gen).feed_token):
            mark.setdefault("first", time.perf_counter())
            return feed(gen, token)

        gen.feed_token = first_feed  # instance attribute: Pipeline.ask passes self.generator.feed_token
        try:
            sync()
            t0 = time.perf_counter()
            last = pipe.ask(video, prompt, max_new_tokens=tokens, logits_processor=forced)
            sync()
            t1 = time.perf_counter()
        finally:
            del gen.feed_token
        if i >= warmup:
            first = {} if forced else {"first_token_ms": (mark.get("first", t1) - t0) * 1e3}
            runs.append({**first, "answer_ms": (t1 - t0) * 1e3, **last.timings_ms})
    keys = [k for k in runs[0] if all(k in r for r in runs)]
    out = {k: stats([r[k] for r in runs]) for k in keys}
    out["tasks"], out["token_ids"] = list(last.tasks), list(last.token_ids)
    out["decoder"] = decoder_of(pipe, video)
    return out


def bench_answers(pipe, video: str, args) -> dict:
    res = {"describe": time_answers(pipe, video, PROMPT, args.reps, args.warmup, args.tokens)}
    for head in args.heads:
        if head in pipe.manifest.heads.untrained:  # a converted release: the runtime refuses it (docs/convert.md)
            res[head] = {"skipped": "manifest heads.untrained: the runtime refuses this head"}
            continue
        reps = max(1, args.reps // 3)
        res[head] = time_answers(pipe, video, "Find the object in the video.", reps, 1, 2, force=FORCED[head])
    return res


# ------------------------------------------------------------------------------------------------ bench
def reference_model(manifest, device: str):
    """(TPOModel or None, note): the PyTorch model behind the export, on ``device`` in the export's float type: our
    random build rebuilt from the manifest's seed (the same weights), or the checkpoint folder it was exported
    from."""
    from export.specs import check_precision

    src, m = manifest.source.checkpoint, manifest
    prec = m.precision if m.precision in ("fp32", "fp16", "bf16") else "fp16"
    if src.startswith("random:"):
        seed = int(src.rsplit("seed", 1)[1])
        model = build_random(m.source.preset, prec, seed, layers=m.kv.layers, device=device)
        return model, f"same weights as the export ({src}), {prec}"
    if Path(src).is_dir():
        from export.exporter import load_for_export

        return load_for_export(src, check_precision(prec)).to(device), f"checkpoint {src}, {prec}"
    return None, f"no reference: the export's source {src!r} is neither a random build of this script nor a folder"


def peer_sam(manifest, ref):
    """Sam2VideoModel for the mask peer: the reference's own SAM2 modules, else a fresh one of the same config."""
    if ref is not None:
        return ref.mask_head.sam, "the reference model's SAM2 modules (same config and weights as the export)"
    from tpo_core.config import TPOConfig
    from tpo_core.modeling.heads.mask import MaskHead

    cfg = TPOConfig.from_dict(manifest.source.config)
    torch.manual_seed(0)
    return MaskHead(cfg.mask, cfg.llm.hidden_size).sam, "same config as the export, fresh random weights"


def time_reference(model, video: str, reps: int, warmup: int, tokens: int, device: str) -> dict:
    """``TPOModel.generate`` (PyTorch eager, HF Mistral with a DynamicCache) on the same clip and prompt: wall clocks
    only (its stage timings are not synchronized)."""
    sync, runs, last = make_sync(device), [], None
    for i in range(warmup + reps):
        mark: dict[str, float] = {}

        def hook(step, logits, mark=mark):
            if step == 0:
                mark["first"] = time.perf_counter()
            return logits

        sync()
        t0 = time.perf_counter()
        with torch.inference_mode():
            last = model.generate(video, PROMPT, max_new_tokens=tokens, logits_processor=hook)
        sync()
        t1 = time.perf_counter()
        if i >= warmup:
            runs.append({"first_token_ms": (mark["first"] - t0) * 1e3, "answer_ms": (t1 - t0) * 1e3,
                         "decode_ms": last.timings_ms["decode_ms"]})
    out = {k: stats([r[k] for r in runs]) for k in runs[0]}
    out["token_ids"], out["decoder"] = list(last.token_ids), "decord"
    return out


def mask_frames(path: Path, n: int, device: str) -> list:
    """``n`` consecutive frames of ``path`` at full size: uint8 ``[H, W, 3]`` (CUDA tensors on CUDA)."""
    from runtime.video_io import open_video

    vr, _ = open_video(path)
    frames = vr.get_batch(list(range(n))).asnumpy()
    if not device.startswith("cuda"):
        return list(frames)
    return [torch.from_numpy(f).to(device) for f in frames]


def run_bench(args, state: Path) -> dict:
    export = Path(args.export) if args.export else state / "export"
    clip = write_clip(state / f"clip_{args.height}p_{args.clip_seconds:g}s_gop{args.gop}.mp4", args.clip_seconds,
                      30, (args.height, args.height * 16 // 9), args.gop)
    report = {"clip": {"file": clip.name, "seconds": args.clip_seconds, "fps": 30, "gop": args.gop,
                       "hw": [args.height, args.height * 16 // 9]}, "answers": {}}
    paths = [p for p in args.paths if p == "host" or args.device.startswith("cuda") or os.environ.get(
        "TRITON_INTERPRET") == "1"]
    t0 = time.perf_counter()
    pipe = Pipeline.from_manifest(export, backend="ort", device=args.device, threads=args.threads)
    report["setup_s"] = time.perf_counter() - t0
    print(f"[e2e] pipeline loaded in {report['setup_s']:.1f}s (hashes checked, every engine opened)", flush=True)
    for path in paths:
        set_video_path(pipe, path)
        report["answers"][path] = bench_answers(pipe, str(clip), args)
    set_video_path(pipe, "device" if args.device.startswith("cuda") else "host")  # the shipped default
    m = pipe.manifest
    report.update(preset=m.source.preset, precision=m.precision, source=m.source.checkpoint,
                  llm_layers=m.kv.layers,
                  llm_graph=m.kv.graph,
                  frames_sampled=m.preprocess.num_frames)
    exp_rec = export / "export_report.json"
    if exp_rec.is_file():
        report["export_report"] = json.loads(exp_rec.read_text())
    ref, note = reference_model(m, args.device) if (args.reference or not args.skip_mask) else (None, "not built")
    report["reference"] = {"weights": note}
    if args.reference and ref is not None:
        report["answers"]["reference"] = {"describe": time_reference(ref, str(clip), max(1, args.reps // 2), 1,
                                                                     args.tokens, args.device)}
        ours = report["answers"][paths[0]]["describe"]["token_ids"]
        theirs = report["answers"]["reference"]["describe"]["token_ids"]
        report["reference"]["same_tokens_prefix"] = next(
            (i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
    if not args.skip_mask:
        sam, note = peer_sam(m, ref)
        frames = mask_frames(clip, 8, args.device)
        report["mask_frame"] = mask_comparison(pipe, sam, frames, args.hf_dtypes, args.fill, args.mask_reps,
                                               args.hf_replica)
        report["mask_frame"]["peer_weights"] = note
    pipe.close()
    return report


def environment(args) -> dict:
    import importlib.metadata as md

    vers = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "onnxruntime", "onnxruntime-gpu", "onnx", "triton", "numpy", "decord",
                "av", "pynvvideocodec", "torchvision"):
        try:
            vers[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            continue
    env = {"device": args.device, "host": platform.node(), "cpus": os.cpu_count(), "versions": vers,
           "command": "python " + " ".join(shlex.quote(a) for a in sys.argv), "date": time.strftime("%Y-%m-%d")}
    if args.device.startswith("cuda"):
        env.update(gpu=torch.cuda.get_device_name(), cuda=torch.version.cuda)
        import onnxruntime as ort

        env["ort_providers"] = ort.get_available_providers()
    return env


# ------------------------------------------------------------------------------------------------ report
def _ms(d: dict | None, key: str) -> str:
    return f"{d[key]['median']:10.1f}" if d and key in d else f"{'-':>10s}"


def print_tables(rep: dict, file=None) -> None:
    file = file or sys.stdout
    ans = rep.get("answers", {})
    paths = list(ans)
    print(f"\nTime to first answer, {rep['frames_sampled']} frames of a {rep['clip']['hw'][0]}p clip "
          f"({rep['clip']['seconds']:g} s, GOP {rep['clip']['gop']}), {rep['preset']} {rep['precision']}, "
          f"{rep['llm_layers']} LLM layers ({rep['llm_graph']} graph), {rep.get('gpu', rep['device'])} (median ms; "
          "reference = TPOModel.generate in PyTorch eager)", file=file)
    print(f"{'stage':34s}" + "".join(f"{p:>11s}" for p in paths), file=file)
    rows = [("read (decode sampled frames)", "read_ms"), ("preprocess", "preprocess_ms"), ("vision", "vision_ms"),
            ("prefill", "prefill_ms"), ("first token (wall)", "first_token_ms"), ("decode", "decode_ms"),
            ("answer (wall)", "answer_ms")]
    for label, key in rows:
        print(f"{label:34s}" + "".join(f" {_ms(ans[p]['describe'], key)}" for p in paths), file=file)
    for head in FORCED:
        if any(head in ans[p] for p in paths):
            print(f"{head + ' answer, forced (wall)':34s}" + "".join(f" {_ms(ans[p].get(head), 'answer_ms')}"
                                                                    for p in paths), file=file)
    best = "device" if "device" in ans else paths[0] if paths else None
    if best and "reference" in ans:
        r, o = ans["reference"]["describe"], ans[best]["describe"]
        print(f"reference / {best}: first token {r['first_token_ms']['median'] / o['first_token_ms']['median']:.2f}x, "
              f"answer {r['answer_ms']['median'] / o['answer_ms']['median']:.2f}x; same greedy tokens for the first "
              f"{rep['reference'].get('same_tokens_prefix')} of {len(o['token_ids'])}", file=file)
    mf = rep.get("mask_frame")
    if not mf:
        return
    hf = mf["hf"]
    print(f"\nOne tracked mask frame, {mf['frame_hw'][0]}x{mf['frame_hw'][1]}, SAM2 at {mf['image_size']} px, "
          f"steady state after {mf['fill_frames']} frames, median of {mf['timed_frames']} (ms; ratio = HF / ours)",
          file=file)
    print(f"{'':40s}{'ours ' + mf['ours']['precision']:>14s}" + "".join(f"{'HF ' + d:>12s}{'ratio':>7s}" for d in hf),
          file=file)
    for label, ours, peers in ratio_rows(mf):
        cells = "".join(f"{v:12.2f}{v / ours:7.2f}" if v is not None else f"{'error':>12s}{'':7s}"
                        for v in peers.values())
        print(f"{label:40s}{ours:14.2f}" + cells, file=file)
    for d, r in hf.items():
        if "error" in r:
            print(f"HF {d}: {r['error']}", file=file)


def check_transformers() -> None:
    """The model code and the SAM2 peer need transformers 5 (setup.py); a carried 4.x on PYTHONPATH would shadow
    the GPU image's 5.17."""
    import transformers

    if int(transformers.__version__.split(".")[0]) < 5:
        raise SystemExit(f"transformers {transformers.__version__} from {Path(transformers.__file__).parent} is "
                         "first on the path; this benchmark needs transformers >= 5.17 (the GPU image has 5.17): carry "
                         "the wheels without transformers==4.57.6 (name them, not --gpu-runtime) or remove it from "
                         "/tmp/site")


def gpu_tag(rep: dict) -> str:
    name = rep.get("gpu") or f"cpu-{rep['preset']}"
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="Phases and commands: see the module docstring.")
    p.add_argument("--phase", nargs="+", choices=PHASES, default=["all"])
    p.add_argument("--preset", default="videochat-tpo-7b")
    p.add_argument("--precision", choices=("fp16", "bf16", "fp32"), default="fp16")
    p.add_argument("--layers", type=int, default=None, help="LLM layers (default: the preset's); a quick dry run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--llm-graph", choices=("gqa", "plain"), default="gqa",
                   help="gqa: GroupQueryAttention graph from ONNX Runtime GenAI's builder, driven by OrtLLM (needs "
                        "onnxruntime-genai at export); plain: the past/present graph")
    p.add_argument("--exporter", choices=("dynamo", "torchscript"), default="dynamo")
    p.add_argument("--state", default="/tmp/tpo_e2e_7b", help="folder kept between phases")
    p.add_argument("--export", default=None, help="bench this export folder instead of STATE/export")
    p.add_argument("--device", default="cuda")
    p.add_argument("--threads", type=int, default=None, help="ORT intra-op threads (CPU)")
    p.add_argument("--paths", nargs="+", choices=("host", "device"), default=["host", "device"],
                   help="video paths to time (device: CUDA, or the CPU with TRITON_INTERPRET=1)")
    p.add_argument("--heads", nargs="*", choices=tuple(FORCED), default=list(FORCED))
    p.add_argument("--height", type=int, default=1080)
    p.add_argument("--clip-seconds", type=float, default=8.0)
    p.add_argument("--gop", type=int, default=30)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--tokens", type=int, default=32, help="length of the short answer")
    p.add_argument("--hf-dtypes", nargs="*", choices=("fp32", "bf16", "fp16"), default=["fp32", "bf16", "fp16"],
                   help="precisions of the transformers Sam2VideoModel peer")
    p.add_argument("--reference", action=argparse.BooleanOptionalAction, default=True,
                   help="also time TPOModel.generate (PyTorch eager) on the same clip (default on)")
    p.add_argument("--skip-mask", action="store_true", help="no per-frame mask comparison")
    p.add_argument("--hf-replica", action="store_true", help="peer pre/post-processing without Sam2VideoProcessor")
    p.add_argument("--fill", type=int, default=0, help="untimed frames before the steady state (at least 17)")
    p.add_argument("--mask-reps", type=int, default=20)
    p.add_argument("--out", default=os.environ.get("OUT", str(ROOT / "benchmarks" / "results")))
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch sees no GPU; pass --device cpu (tiny preset) or run on the GPU")
    check_transformers()
    torch.set_num_threads(os.cpu_count() or 1)
    state = Path(args.state)
    state.mkdir(parents=True, exist_ok=True)
    phases = ["export", "bench"] if "all" in args.phase else args.phase
    if args.export:
        phases = [ph for ph in phases if ph == "bench"]
    for phase in phases:
        t0 = time.perf_counter()
        if phase != "bench":
            rec = run_export_phase(args, phase, state)
            print(f"[e2e] {phase}: {json.dumps(rec)}", flush=True)
            continue
        rep = {**environment(args), **run_bench(args, state)}
        rep["bench_s"] = time.perf_counter() - t0
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"e2e_7b_{gpu_tag(rep)}.json"
        path.write_text(json.dumps(rep, indent=1) + "\n")
        print_tables(rep)
        print(f"[e2e] wrote {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
