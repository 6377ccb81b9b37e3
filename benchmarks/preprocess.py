"""Benchmark on-device preprocessing (fused Triton kernels) vs numpy on the host and torch's interpolate (GPU).

    python benchmarks/preprocess.py [--quick] [--reps 200] [--sweep] [--decode] [--out FILE_OR_DIR]

1. Correctness gate: the fused kernels vs ``runtime.preprocess.Preprocessor`` (numpy) on the same 1080p frames:
   max |diff| on the 0..255 scale (stated tolerance 1e-3) and whether the outputs are bit-exact. Exits 1 when a
   case exceeds the tolerance.
2. Timing of 8 frames at 1080p (uint8 RGB on the device, 4 input sets rotated: 200 MB > the 50 MB L2), medians:
   ``fused_ms`` (CUDA events around one call from Python: launch overhead included), ``fused_gpu_ms`` (20 calls
   captured in a CUDA graph, replay / 20: device time only), ``torch_ms`` (permute + float + ``F.interpolate`` +
   clamp on the GPU, events), ``numpy_ms`` (``Preprocessor`` on the host, perf_counter, no upload) and
   ``numpy_h2d_ms`` (plus the copy of its result to the device). Cases: the 7B vision input (224), the tiny
   model's (64), the SAM2-L mask input (1024), the tiny mask input (128), and the two issue-10 targets: vision 224
   + mask 1024, and vision 64 + mask 128, back to back (``both_*``), each for RGB interleaved and planar input.
   Floor = (input bytes read once + output bytes written once) / measured device-to-device copy bandwidth.
3. ``--sweep``: the same for other tile shapes (block_y, block_x, num_warps) of the fused kernel.
4. ``--decode``: writes 10 s 1080p30 H.264 videos (GOP 250 = x264's default, and GOP 30) with PyAV and times
   ``read_clip_cuda`` for 8 and 16 frames: NVDEC with each access strategy and decord + upload (median of 3).
5. ``--out``: a JSON file, or a directory (then ``preprocess_<device>.json`` in it).

Importing this module is CPU-safe (torch/triton are imported in main()).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for p in (REPO, REPO / "benchmarks"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import mask_decode  # noqa: E402 -- after the sys.path set-up

T, H, W = 8, 1080, 1920
CASES = [  # name, vision size or None, mask size or None
    ("vision_224", 224, None), ("vision_64", 64, None), ("mask_1024", None, 1024), ("mask_128", None, 128),
    ("both_224_1024", 224, 1024), ("both_64_128", 64, 128),
]
ATOL = 1e-3
DEVICE = "cuda"
DRY_SIZES = {224: 12, 64: 6, 1024: 20, 128: 8}  # --dry-run: tiny sizes, CPU interpreter, host clocks


def _host_ms(torch, fn, inputs: list, reps: int, warmup: int = 1, **_) -> float:
    for i in range(warmup):
        fn(inputs[i % len(inputs)])
    ts = []
    for i in range(reps):
        t0 = time.perf_counter()
        fn(inputs[i % len(inputs)])
        ts.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ts)


_time_ms, _gpu_ms, copy_bandwidth_gbs = mask_decode._time_ms, mask_decode._gpu_ms, mask_decode.copy_bandwidth_gbs


def _sz(size: int) -> int:
    return size if DEVICE == "cuda" else DRY_SIZES[size]


def _sync(torch) -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def make_frames(np, seed: int):
    """Real-image-like uint8 [T, H, W, 3]: smooth content + texture (never zeros)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:H, :W]
    smooth = (127 + 120 * np.sin(xx / 37.0 + yy / 23.0 + seed))[None, :, :, None]
    return np.clip(smooth + rng.integers(-40, 41, (T, H, W, 3)), 0, 255).astype(np.uint8)


def check(torch, np, frames_host, src) -> list[dict]:
    from runtime.kernels.preprocess_triton import preprocess_mask_cuda, preprocess_vision_cuda
    from runtime.preprocess import Preprocessor

    rows = []
    for name, size, fn in (("vision", _sz(224), preprocess_vision_cuda), ("vision", _sz(64), preprocess_vision_cuda),
                           ("mask", _sz(1024), preprocess_mask_cuda), ("mask", _sz(128), preprocess_mask_cuda)):
        pp = Preprocessor(size=size, mask_size=size)
        ref = torch.from_numpy(pp.vision(frames_host) if name == "vision" else pp.mask(frames_host))
        for layout in ("thwc", "tchw"):
            x = src if layout == "thwc" else src.permute(0, 3, 1, 2).contiguous()
            got = fn(x, size, layout=layout).cpu()
            diff = (got - ref).abs().max().item()
            rows.append({"input": name, "size": size, "layout": layout, "max_abs_diff": diff,
                         "bit_exact": bool(torch.equal(got, ref)), "ok": diff <= ATOL})
    return rows


def _fns(torch, F, size, msize, layout):
    """(fused, torch) callables for one case; each takes an input set (uint8 frames on the device)."""
    from runtime.kernels.preprocess_triton import preprocess_mask_cuda, preprocess_vision_cuda

    def fused(x):
        if size:
            preprocess_vision_cuda(x, size, layout=layout)
        if msize:
            preprocess_mask_cuda(x, msize, layout=layout)

    def ref(x):
        f = (x.permute(0, 3, 1, 2) if layout == "thwc" else x).float()
        if size:
            F.interpolate(f, size=(size, size), mode="bicubic", align_corners=False).clamp_(0, 255)[None]
        if msize:
            F.interpolate(f, size=(msize, msize), mode="bilinear", align_corners=False, antialias=True)

    return fused, ref


_NUMPY_MS: dict = {}  # case -> (numpy_ms, numpy_h2d_ms): the host path does not depend on the device layout


def numpy_times(torch, name, size, msize, host) -> tuple[float, float]:
    """Median of 3 host runs of Preprocessor (vision and/or mask), without and with the upload of the result."""
    from runtime.preprocess import Preprocessor

    if name in _NUMPY_MS:
        return _NUMPY_MS[name]
    pp = Preprocessor(size=size or 224, mask_size=msize)
    res = []
    for upload in (False, True):
        ts = []
        for _ in range(3):
            t0 = time.perf_counter()
            outs = ([pp.vision(host)] if size else []) + ([pp.mask(host)] if msize else [])
            if upload:
                for o in outs:
                    torch.from_numpy(o).to(DEVICE)
                _sync(torch)
            ts.append((time.perf_counter() - t0) * 1e3)
        res.append(statistics.median(ts))
    _NUMPY_MS[name] = (res[0], res[1])
    return _NUMPY_MS[name]


def bench_case(torch, F, np, name, size, msize, layout, sets, host, reps, bw) -> dict:

    xs = sets if layout == "thwc" else [s.permute(0, 3, 1, 2).contiguous() for s in sets]
    fused, ref = _fns(torch, F, size, msize, layout)
    row = {"case": name, "layout": layout, "T": T, "H": H, "W": W, "vision_size": size, "mask_size": msize}
    row["fused_ms"] = _time_ms(torch, fused, xs, reps)
    row["fused_gpu_ms"] = _gpu_ms(torch, fused, xs, reps)
    row["torch_ms"] = _time_ms(torch, ref, xs, max(20, reps // 4))
    row["numpy_ms"], row["numpy_h2d_ms"] = numpy_times(torch, name, size, msize, host)
    out_elems = (3 * size * size if size else 0) + (3 * msize * msize if msize else 0)
    row["bytes"] = T * H * W * 3 + T * out_elems * 4
    row["floor_ms"] = row["bytes"] / (bw * 1e9) * 1e3
    row.update(fused_over_floor=row["fused_ms"] / row["floor_ms"],
               fused_gpu_over_floor=row["fused_gpu_ms"] / row["floor_ms"],
               torch_over_fused=row["torch_ms"] / row["fused_ms"], numpy_over_fused=row["numpy_ms"] / row["fused_ms"],
               achieved_gbs=row["bytes"] / (row["fused_gpu_ms"] * 1e-3) / 1e9)
    return row


def sweep(torch, F, sets, reps) -> list[dict]:
    import runtime.kernels.preprocess_triton as K

    rows = []
    for cfg in [K.TileConfig(by, bx, nw) for by, bx, nw in
                ((8, 32, 2), (8, 32, 1), (8, 64, 4), (16, 64, 4), (16, 64, 8), (16, 32, 4), (32, 32, 8),
                 (4, 128, 4), (16, 128, 8), (32, 64, 16))]:
        K.TILE_OVERRIDE = cfg
        for name, size, msize in (("vision_224", _sz(224), None), ("mask_1024", None, _sz(1024)),
                                  ("vision_64", _sz(64), None), ("mask_128", None, _sz(128))):
            fused, _ = _fns(torch, F, size, msize, "thwc")
            rows.append({"case": name, "block_y": cfg.block_y, "block_x": cfg.block_x, "num_warps": cfg.num_warps,
                         "fused_gpu_ms": _gpu_ms(torch, fused, sets, reps)})
    K.TILE_OVERRIDE = None
    return rows


def write_video(np, path: Path, seconds: int, gop: int) -> Path:
    from fractions import Fraction

    import av

    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    yy, xx = np.mgrid[:H, :W]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=Fraction(30))
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "20", "preset": "ultrafast", "g": str(gop)}
        else:
            stream.bit_rate, stream.gop_size = 8_000_000, gop
        for i in range(30 * seconds):
            f = np.stack([(xx + 4 * i) % 256, (yy + 2 * i) % 256, (xx + yy + 8 * i) % 256], -1).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def decord_threads(path: Path, gop: int, seconds: int, num_frames: int) -> list[dict]:
    """``read_clip`` on the host (decord) at 1, 4, 8 and FFmpeg's own number of decoder threads (median of 3)."""
    from runtime.video_io import read_clip

    rows = []
    for threads in (1, 4, 8, 0):
        read_clip(path, num_frames, threads=threads)
        ts = []
        for _ in range(3):
            t0 = time.perf_counter()
            read_clip(path, num_frames, threads=threads)
            ts.append((time.perf_counter() - t0) * 1e3)
        rows.append({"gop": gop, "frames_in_file": 30 * seconds, "num_frames": num_frames, "decoder": "decord-host",
                     "threads": threads, "ms": statistics.median(ts), "cpus": os.cpu_count()})
    return rows


def bench_decode(np, seconds: int = 10) -> list[dict]:
    from runtime.video_gpu import nvdec_available, read_clip_cuda

    ok, why = nvdec_available()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for gop in (250, 30):
            path = write_video(np, Path(tmp) / f"gop{gop}.mp4", seconds, gop)
            for num_frames in (8, 16):
                runs = [("decord", "auto")] + ([("nvdec", s) for s in ("sequential", "index", "gop", "auto")]
                                               if ok and DEVICE == "cuda" else [])
                for decoder, strategy in runs:
                    kw = {"device": DEVICE, "decoder": decoder, "strategy": strategy}
                    read_clip_cuda(path, num_frames, **kw)  # warm-up
                    ts, clip = [], None
                    for _ in range(3):
                        t0 = time.perf_counter()
                        clip = read_clip_cuda(path, num_frames, **kw)
                        ts.append((time.perf_counter() - t0) * 1e3)
                    rows.append({"gop": gop, "frames_in_file": 30 * seconds, "num_frames": num_frames,
                                 "decoder": clip.decoder, "strategy": clip.strategy,
                                 "ms": statistics.median(ts),
                                 "frames_decoded": clip.frames_decoded, "notes": clip.notes})
                rows += decord_threads(path, gop, seconds, num_frames)
    if not ok:
        rows.append({"nvdec": False, "why": why})
    return rows


def _dry_run_setup() -> None:
    """--dry-run: the CPU interpreter at tiny sizes, host clocks instead of CUDA events / graphs."""
    import os

    global T, H, W, CASES, DEVICE, _time_ms, _gpu_ms, copy_bandwidth_gbs
    if os.environ.get("TRITON_INTERPRET") != "1":
        sys.exit("--dry-run runs the Triton kernels on the CPU: set TRITON_INTERPRET=1")
    T, H, W, DEVICE = 2, 24, 40, "cpu"  # even sides: the dry-run videos are yuv420p
    CASES = [(n, DRY_SIZES.get(v), DRY_SIZES.get(m)) for n, v, m in CASES]
    _time_ms = _gpu_ms = _host_ms

    def copy_bandwidth_gbs(torch, reps):  # noqa: F811 -- host memcpy stands in for the device copy
        src = torch.empty(1 << 24, dtype=torch.float32)
        dst = torch.empty_like(src)
        return 2 * src.numel() * 4 / (_host_ms(torch, lambda _: dst.copy_(src), [None], 5) * 1e-3) / 1e9


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer reps, interleaved layout only")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--sweep", action="store_true", help="also time other tile shapes")
    ap.add_argument("--decode", action="store_true", help="also time NVDEC / decord clip reading (needs av)")
    ap.add_argument("--out", type=Path, default=None, help="JSON file or directory")
    ap.add_argument("--dry-run", action="store_true",
                    help="tiny sizes on the CPU under TRITON_INTERPRET=1, host clocks: checks the script, not speed")
    args = ap.parse_args(argv)
    cmd = " ".join(["benchmarks/preprocess.py", *(sys.argv[1:] if argv is None else argv)])
    import numpy as np
    import torch
    import torch.nn.functional as F

    if args.dry_run:
        _dry_run_setup()
    elif not torch.cuda.is_available():
        print("CUDA not available: this benchmark needs a GPU (or --dry-run)", file=sys.stderr)
        return 2
    import triton

    reps = args.reps or (1 if args.dry_run else 30 if args.quick else 200)
    host_sets = [make_frames(np, s) for s in range(4)]
    sets = [torch.from_numpy(h).to(DEVICE) for h in host_sets]
    correctness = check(torch, np, host_sets[0], sets[0])
    for r in correctness:
        print(f"check {r['input']:>6} {r['size']:>4} {r['layout']}: max|diff| {r['max_abs_diff']:.2e} "
              f"bit-exact {r['bit_exact']}")
    bw = copy_bandwidth_gbs(torch, reps)
    rows = [bench_case(torch, F, np, name, size, msize, layout, sets, host_sets[0], reps, bw)
            for name, size, msize in CASES for layout in (("thwc",) if args.quick else ("thwc", "tchw"))]
    cols = ["fused_ms", "fused_gpu_ms", "torch_ms", "numpy_ms", "numpy_h2d_ms", "floor_ms", "fused_gpu_over_floor",
            "torch_over_fused", "numpy_over_fused"]
    print(f"\n{T} frames {H}x{W} uint8 on the device; D2D copy bandwidth {bw:.0f} GB/s (ms unless a ratio)")
    print(f"{'case':>14} {'layout':>6} " + " ".join(f"{c.replace('_ms', ''):>14}" for c in cols))
    for r in rows:
        print(f"{r['case']:>14} {r['layout']:>6} " + " ".join(f"{r[c]:>14.4f}" for c in cols))
    sweep_rows = sweep(torch, F, sets, reps) if args.sweep else []
    for r in sweep_rows:
        print(f"sweep {r['case']:>11} tile {r['block_y']}x{r['block_x']} warps {r['num_warps']}: "
              f"{r['fused_gpu_ms']:.4f} ms")
    decode_rows = bench_decode(np, 1 if args.dry_run else 10) if args.decode else []
    for r in decode_rows:
        print("decode", json.dumps(r))
    dev = torch.cuda.get_device_name() if DEVICE == "cuda" else f"dry-run-cpu-{platform.machine()}"
    out = {"device": dev, "torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
           "python": platform.python_version(), "command": cmd,
           "reps": reps, "copy_bandwidth_gbs": bw, "tolerance_0_255": ATOL, "correctness": correctness,
           "results": rows, "sweep": sweep_rows, "decode": decode_rows}
    if args.out is not None:
        from runtime.report import write_result

        print(f"wrote {write_result(args.out, 'preprocess', dev, out)}")
    return 0 if all(r["ok"] for r in correctness) else 1


if __name__ == "__main__":
    sys.exit(main())
