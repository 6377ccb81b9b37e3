"""``tpo bench``: per-stage latency of an export on one backend/device, with warm-up and device sync.

Stages (each timed ``iters`` times after ``warmup`` untimed runs; on CUDA the clock is read after
``torch.cuda.synchronize``):

==================  ===================================================================================
``preprocess``      host uint8 frames -> the vision input: numpy resize on the CPU; upload + fused Triton resize on CUDA
``vision``          ``vision`` engine, frames ``[1, T, 3, S, S]``
``prefill``         ``llm`` engine over the full prompt (visual tokens + text), KV cache reset each time
``decode_token``    one ``llm`` decode step (``tokens`` steps per iteration after a prefill; per step)
``head_region``     ``head_region`` engine
``head_temporal``   ``head_temporal`` engine (T frame features)
``mask_frame``      one tracked frame: image encoder + memory attention + decoder + memory encoder
``mask_decode``     fused ``decode_masks`` of one frame's low-res logits to the video resolution
``e2e_frame``       one streamed frame with tracking (preprocess + mask_frame + mask_decode), end to end
``ask``             one full ``Pipeline.ask`` (greedy, ``tokens`` new tokens)
==================  ===================================================================================

Reported per stage: mean, p50, p90, p99, min, max (ms). Also: peak host RSS (MB), peak CUDA memory (MB, when on
CUDA), device name, and package versions. ``decode_token`` is also given as tokens/s.
"""

from __future__ import annotations

import platform
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from runtime.mask_decode import decode_masks


def _percentiles(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms, np.float64)
    return {"n": int(a.size), "mean": float(a.mean()), "p50": float(np.percentile(a, 50)),
            "p90": float(np.percentile(a, 90)), "p99": float(np.percentile(a, 99)), "min": float(a.min()),
            "max": float(a.max())}


def _time(fn: Callable[[], object], sync: Callable[[], None], iters: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    sync()
    out = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        sync()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("numpy", "onnxruntime", "onnxruntime-gpu", "tensorrt", "torch", "tokenizers", "triton"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            continue
    return out


def _device_info(device: str) -> dict:
    info = {"device": device, "platform": platform.platform(), "processor": platform.processor() or platform.machine()}
    try:
        import os

        info["cpu_count"] = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    if device.startswith("cuda"):
        import torch

        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
        info["cuda"] = torch.version.cuda
    return info


def run_bench(export_dir: str | Path, backend: str = "ort", device: str = "cpu", threads: int | None = None,
              video: str | None = None, size: tuple[int, int] = (480, 640), iters: int = 20, warmup: int = 3,
              tokens: int = 32, cuda_graphs: bool = True) -> dict:
    """Benchmark an export; returns the JSON-ready report (see the module docstring)."""
    from runtime.pipeline import Pipeline

    if iters < 1 or warmup < 0 or tokens < 1:
        raise ValueError(f"iters >= 1, warmup >= 0 and tokens >= 1 are required, got {iters}, {warmup}, {tokens}")
    pipe = Pipeline.from_manifest(export_dir, backend=backend, device=device, threads=threads, cuda_graphs=cuda_graphs)
    ops, sync = pipe.ops, pipe.ops.sync
    if device.startswith("cuda"):
        import torch

        torch.cuda.reset_peak_memory_stats(torch.device(device))
    if video is not None:
        clip = pipe.load_clip(video)
    else:
        frames = np.random.default_rng(0).integers(0, 256, (pipe.num_frames * 4, *size, 3), dtype=np.uint8)
        clip = pipe.load_clip(frames, fps=8.0)
    stages: dict[str, list[float]] = {}
    x = ops.asarray(pipe._vision_input(clip.frames), pipe._input_dtype("vision", "frames"))
    # host frames in: on CUDA the uint8 upload + the fused Triton resize, on the CPU the numpy resize
    stages["preprocess"] = _time(lambda: pipe._vision_input(clip.frames), sync, iters, warmup)
    stages["vision"] = _time(lambda: pipe.engines["vision"].run({"frames": x}), sync, iters, warmup)
    vis = pipe.engines["vision"].run({"frames": x})
    ids = pipe.tokenizer.build("Describe the video in detail.", clip.timestamps)
    gen = pipe.generator
    embeds = ops.concat([gen.embed_ids(ids.pre), ops.cast(vis["visual_tokens"], pipe.dtype), gen.embed_ids(ids.post)],
                        axis=1)

    def prefill():
        pipe.generator.reset()
        return gen.append(embeds)

    stages["prefill"] = _time(prefill, sync, iters, warmup)
    steps = min(tokens, pipe.generator.capacity - ids.prompt_len)
    tok_emb = gen.embed_ids([int(pipe.tokenizer.eos_id)])
    decode = []
    for i in range(warmup + iters):
        prefill()
        sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            gen.append(tok_emb)
        sync()
        if i >= warmup:
            decode.append((time.perf_counter() - t0) * 1e3 / steps)
    stages["decode_token"] = decode
    h = ops.cast(ops.asarray(np.random.default_rng(1).standard_normal(embeds.shape[-1]).astype(np.float32)),
                 pipe._input_dtype("head_region", "task_embedding"))[None]
    feeds = pipe.head_feeds("head_region", h, vis.get("patch_tokens"))
    stages["head_region"] = _time(lambda: pipe.engines["head_region"].run(feeds), sync, iters, warmup)
    stages["head_temporal"] = _time(lambda: pipe._temporal(h, clip, vis["frame_features"]), sync, iters, warmup)
    if pipe.tracker is not None:
        _bench_mask(pipe, clip, h, stages, iters, warmup, vis.get("patch_tokens"))
    stages["ask"] = _time(lambda: pipe.ask(clip, "What is in the video?", max_new_tokens=tokens), sync,
                          max(1, iters // 4), min(warmup, 1))
    report = {"export": str(export_dir), "backend": backend, **_device_info(device), "versions": _versions(),
              "frames": list(clip.frames.shape), "video_hw": [clip.height, clip.width], "prompt_tokens": ids.prompt_len,
              "decode_steps": steps, "stages_ms": {k: _percentiles(v) for k, v in stages.items()}}
    report["decode_tokens_per_s"] = 1e3 / report["stages_ms"]["decode_token"]["p50"]
    report["cuda_graphs"] = pipe.graph_status if pipe.cuda_graphs else "off"
    report["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    if device.startswith("cuda"):
        import torch

        report["peak_cuda_mb"] = torch.cuda.max_memory_allocated(torch.device(device)) / 2**20
    return report


def _bench_mask(pipe, clip, h, stages: dict, iters: int, warmup: int, patches=None) -> None:
    tracker, ops, sync = pipe.new_tracker(), pipe.ops, pipe.ops.sync
    tracker.start(tracker.prompt(h[0], patches))
    frame = clip.frames[:1]
    dtype = pipe._input_dtype("mask_image_encoder", "pixels")

    def mask_frame():
        px = ops.asarray(pipe.mask_pixels(frame), dtype)
        return tracker.step(tracker.encode_images(px)[0])

    stages["mask_frame"] = _time(mask_frame, sync, iters, warmup)
    fm = mask_frame()
    hw = (clip.frames.shape[1], clip.frames.shape[2])
    score = ops.asarray(np.ones(1, np.float32))
    stages["mask_decode"] = _time(lambda: decode_masks(fm.low_res_logits, hw, score).to_numpy(), sync, iters, warmup)

    def e2e():
        m = mask_frame()
        return decode_masks(m.low_res_logits, hw, ops.cast(m.score_logits, "float32")).to_numpy()

    stages["e2e_frame"] = _time(e2e, sync, iters, warmup)


def print_report(report: dict, file=None) -> None:
    file = file or sys.stdout
    print(f"{report['export']} on {report.get('gpu') or report['processor']} ({report['backend']}, "
          f"{report['device']}); frames {report['frames']}, prompt {report['prompt_tokens']} tokens", file=file)
    print(f"{'stage':15s} {'p50':>9s} {'p90':>9s} {'p99':>9s} {'mean':>9s}  (ms)", file=file)
    for name, s in report["stages_ms"].items():
        print(f"{name:15s} {s['p50']:9.3f} {s['p90']:9.3f} {s['p99']:9.3f} {s['mean']:9.3f}", file=file)
    graphs = report.get("cuda_graphs")
    if isinstance(graphs, dict):
        for name, sigs in graphs.items():
            print(f"cuda graphs {name:22s} " + "; ".join(f"{v} ({k})" for k, v in sigs.items()), file=file)
    print(f"decode: {report['decode_tokens_per_s']:.1f} tokens/s; peak RSS {report['peak_rss_mb']:.0f} MB"
          + (f"; peak CUDA {report['peak_cuda_mb']:.0f} MB" if "peak_cuda_mb" in report else ""), file=file)
