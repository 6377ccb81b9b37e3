"""Benchmark fused mask decoding vs the naive torch chain (GPU). Usage:

    python benchmarks/mask_decode.py [--quick] [--reps 200]

1. Correctness gate on the GPU: Triton bits/boxes/areas vs ``F.interpolate(...) > 0`` on CUDA (bit-exact)
   for float32/float16/bfloat16 and several sizes; plus a float-level probe of every arithmetic variant
   (``VARIANTS``) vs the CUDA kernel's values. Exits 1 on any mismatch of the default variant.
2. Timing (medians, warm-up, rotating among several input sets), in two kinds:
   * GPU-only (``*_gpu_ms``): 20 calls captured in one CUDA graph, replay time / 20 -- the device work with
     no Python or launch overhead: naive ``interpolate(...) > 0``, and the fused decode (2 kernels).
   * With host overhead (``*_ms``): CUDA events around one call from Python. When the host is slower than
     the GPU these measure the host. ``*_host_cpu_ms`` is the CPU time spent inside one call.
     naive: interpolate(fp32) -> sigmoid -> > 0.5 -> .cpu(); fused_host: decode_masks + copy of
     bits/boxes/areas to pinned host memory; fused: decode_masks (fresh outputs); decoder: ``MaskDecoder``
     (outputs reused); decoder_graph: ``MaskDecoder(cuda_graph=True)`` replay with the input already in its
     static buffer.
   Memory floor = (logits bytes + bitmask bytes + boxes/areas bytes) / measured D2D copy bandwidth.
3. Writes JSON to ``$OUT/mask_decode_<device>.json`` if OUT is set, else ``benchmarks/results/``.

Importing this module is CPU-safe (torch/triton are imported in main()).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _time_ms(torch, fn, inputs: list, reps: int, warmup: int = 10) -> float:
    """Median milliseconds of ``fn(inp)`` over reps, rotating inputs; each rep bracketed by CUDA events."""
    for i in range(warmup):
        fn(inputs[i % len(inputs)])
    torch.cuda.synchronize()
    times = []
    for i in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(inputs[i % len(inputs)])
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _host_cpu_ms(torch, fn, inputs: list, reps: int) -> float:
    """Median CPU milliseconds spent inside one call (GPU idle before each call)."""
    times = []
    for i in range(reps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn(inputs[i % len(inputs)])
        times.append(time.perf_counter() - t0)
    torch.cuda.synchronize()
    return statistics.median(times) * 1e3


def _gpu_ms(torch, fn, inputs: list, reps: int, inner: int = 20) -> float:
    """GPU-only milliseconds per call: ``inner`` calls captured in one CUDA graph, median replay / inner."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up (compilation, allocator) outside the capture
        for i in range(3):
            fn(inputs[i % len(inputs)])
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(inner):
            fn(inputs[i % len(inputs)])
    return _time_ms(torch, lambda _: graph.replay(), [None], max(10, reps // 4), warmup=3) / inner


def copy_bandwidth_gbs(torch, reps: int) -> float:
    """Device-to-device copy bandwidth (read + write bytes / time) with a 1 GiB buffer."""
    n = 1 << 28  # float32 elements = 1 GiB
    src = torch.empty(n, dtype=torch.float32, device="cuda")
    dst = torch.empty_like(src)
    ms = _time_ms(torch, lambda _: dst.copy_(src), [None], max(10, reps // 10), warmup=3)
    return 2 * n * 4 / (ms * 1e-3) / 1e9


def check_correctness(torch, F, quick: bool) -> dict:
    """Bit-exact gate vs torch CUDA + float-level variant probe. Returns a report dict."""
    from runtime.kernels.mask_decode_triton import DEFAULT_VARIANT, VARIANTS, interpolate_values_triton
    from runtime.mask_decode import decode_masks

    cases = [((3, 1, 1), (5, 7)), ((4, 7, 13), (1080, 1920)), ((2, 7, 13), (1920, 1080)),
             ((16, 256, 256), (1080, 1920)), ((3, 300, 200), (37, 61)), ((2, 33, 47), (1, 700))]
    seeds = range(2 if quick else 8)
    mism = []
    gen = torch.Generator(device="cuda")
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for shape, hw in cases:
            for seed in seeds:
                gen.manual_seed(seed)
                scale = [1.0, 1e-3, 1e-7, 1e-30][seed % 4]
                x = (torch.randn(shape, device="cuda", generator=gen) * scale).to(dtype)
                res = decode_masks(x, hw)
                ref = F.interpolate(x[None], size=hw, mode="bilinear", align_corners=False)[0] > 0
                got = torch.from_numpy(res.masks()).cuda()
                nbad = int((got != ref).sum())
                area_ok = torch.equal(res.areas, ref.flatten(1).sum(1))
                if nbad or not area_ok:
                    mism.append({"dtype": str(dtype), "shape": shape, "hw": hw, "seed": seed,
                                 "bad_pixels": nbad, "areas_ok": area_ok})
    probe = {}
    gen.manual_seed(123)
    x = torch.randn((4, 64, 64), device="cuda", generator=gen)
    for hw in [(1080, 1920), (720, 1280), (37, 61)]:
        ref = F.interpolate(x[None], size=hw, mode="bilinear", align_corners=False)[0]
        for v in VARIANTS:
            bad = int((interpolate_values_triton(x, hw, v) != ref).sum())
            probe.setdefault(str(v), 0)
            probe[str(v)] += bad
    matching = [v for v, bad in probe.items() if bad == 0]
    return {"mismatches": mism, "default_variant": str(DEFAULT_VARIANT),
            "float_value_mismatches_per_variant": probe, "variants_matching_cuda_floats": matching}


def bench_case(torch, F, n: int, hw: tuple[int, int], lowres: int, reps: int, bw: float) -> dict:
    from runtime.kernels.mask_decode_triton import MaskDecoder
    from runtime.mask_decode import decode_masks

    H, W = hw
    sets = [torch.randn((n, lowres, lowres), device="cuda") for _ in range(4)]
    words = -(-W // 32)
    host_bits = torch.empty((n, H, words), dtype=torch.int32, pin_memory=True)
    host_boxes = torch.empty((n, 4), dtype=torch.int32, pin_memory=True)
    host_areas = torch.empty((n,), dtype=torch.int64, pin_memory=True)
    dec = MaskDecoder(n, (lowres, lowres), hw)
    dec_graph = MaskDecoder(n, (lowres, lowres), hw, cuda_graph=True)
    dec_graph.logits.copy_(sets[0])

    def naive(x):
        return (torch.sigmoid(F.interpolate(x[None], size=hw, mode="bilinear", align_corners=False)[0])
                > 0.5).cpu()

    def fused_host(x):
        r = decode_masks(x, hw)
        host_bits.copy_(r.bits, non_blocking=True)
        host_boxes.copy_(r.boxes, non_blocking=True)
        host_areas.copy_(r.areas, non_blocking=True)

    fns = {"naive": naive, "fused_host": fused_host, "fused": lambda x: decode_masks(x, hw),
           "decoder": dec, "decoder_graph": lambda _: dec_graph()}
    row = {"n": n, "lowres": lowres, "H": H, "W": W}
    for name, fn in fns.items():
        row[f"{name}_ms"] = _time_ms(torch, fn, sets, reps)
        row[f"{name}_host_cpu_ms"] = _host_cpu_ms(torch, fn, sets, reps)
    row["naive_gpu_ms"] = _gpu_ms(torch, lambda x: F.interpolate(x[None], size=hw, mode="bilinear",
                                                                 align_corners=False)[0] > 0, sets, reps)
    row["fused_gpu_ms"] = _gpu_ms(torch, dec, sets, reps)
    bytes_moved = n * lowres * lowres * 4 + n * H * words * 4 + n * (16 + 8)
    floor_ms = bytes_moved / (bw * 1e9) * 1e3
    row.update(floor_ms=floor_ms, bytes=bytes_moved,
               naive_over_fused_host=row["naive_ms"] / row["fused_host_ms"],
               naive_over_fused=row["naive_ms"] / row["fused_ms"],
               naive_gpu_over_fused_gpu=row["naive_gpu_ms"] / row["fused_gpu_ms"],
               fused_over_floor=row["fused_ms"] / floor_ms, fused_gpu_over_floor=row["fused_gpu_ms"] / floor_ms,
               decoder_graph_over_floor=row["decoder_graph_ms"] / floor_ms)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer reps/seeds/cases")
    ap.add_argument("--reps", type=int, default=None)
    args = ap.parse_args(argv)
    import torch
    import torch.nn.functional as F

    if not torch.cuda.is_available():
        print("CUDA not available: this benchmark needs a GPU", file=sys.stderr)
        return 2
    import triton

    reps = args.reps or (30 if args.quick else 200)
    report = check_correctness(torch, F, args.quick)
    print(json.dumps({k: v for k, v in report.items() if k != "mismatches"}, indent=1))
    if report["mismatches"]:
        print(f"FAIL: {len(report['mismatches'])} mismatching cases vs torch CUDA:", file=sys.stderr)
        for m in report["mismatches"][:20]:
            print("  ", m, file=sys.stderr)
    bw = copy_bandwidth_gbs(torch, reps)
    rows = []
    sizes = [(1080, 1920)] if args.quick else [(1080, 1920), (720, 1280)]
    for hw in sizes:
        for n in (1, 4, 16):
            rows.append(bench_case(torch, F, n, hw, 256, reps, bw))
    cols = ["naive_ms", "fused_host_ms", "fused_ms", "decoder_ms", "decoder_graph_ms", "fused_host_cpu_ms",
            "decoder_host_cpu_ms", "naive_gpu_ms", "fused_gpu_ms", "floor_ms"]
    print(f"\nD2D copy bandwidth: {bw:.0f} GB/s (times in ms)\n  N out       " + " ".join(
        f"{c.replace('_ms', ''):>13}" for c in cols))
    for r in rows:
        print(f"{r['n']:>3} {r['H']}x{r['W']:<5} " + " ".join(f"{r[c]:>13.4f}" for c in cols))
    dev = torch.cuda.get_device_name()
    out = {"device": dev, "torch": torch.__version__, "triton": triton.__version__,
           "cuda": torch.version.cuda, "python": platform.python_version(),
           "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
           "reps": reps, "copy_bandwidth_gbs": bw, "correctness": report, "results": rows}
    from runtime.report import write_result

    out_dir = Path(os.environ["OUT"]) if os.environ.get("OUT") else REPO / "benchmarks" / "results"
    print(f"wrote {write_result(out_dir, 'mask_decode', dev, out)}")
    return 1 if report["mismatches"] else 0


if __name__ == "__main__":
    sys.exit(main())
