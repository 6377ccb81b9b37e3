"""Benchmark fused mask decoding vs the naive torch chain (GPU). Usage:

    python benchmarks/mask_decode.py [--quick] [--reps 200]

1. Correctness gate on the GPU: Triton bits/boxes/areas vs ``F.interpolate(...) > 0`` on CUDA (bit-exact)
   for float32/float16/bfloat16 and several sizes; plus a float-level probe of every arithmetic variant
   (``VARIANTS``) vs the CUDA kernel's values. Exits 1 on any mismatch of the default variant.
2. Timing (median over reps, CUDA events, warm-up, rotating among several input sets):
   (a) naive: interpolate(fp32) -> sigmoid -> > 0.5 -> .cpu() per frame,
   (b) fused kernel + copy of bits/boxes/areas to pinned host memory, (c) fused kernel alone.
   Memory floor = (logits bytes + bitmask bytes + boxes/areas bytes) / measured D2D copy bandwidth.
3. Writes JSON to ``$OUT/mask_decode_<device>.json`` if OUT is set, else ``benchmarks/results/``.

Importing this module is CPU-safe (torch/triton are imported in main()).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
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
    from runtime.mask_decode import decode_masks

    H, W = hw
    sets = [torch.randn((n, lowres, lowres), device="cuda") for _ in range(4)]
    words = -(-W // 32)
    host_bits = torch.empty((n, H, words), dtype=torch.int32, pin_memory=True)
    host_boxes = torch.empty((n, 4), dtype=torch.int32, pin_memory=True)
    host_areas = torch.empty((n,), dtype=torch.int64, pin_memory=True)

    def naive(x):
        return (torch.sigmoid(F.interpolate(x[None], size=hw, mode="bilinear", align_corners=False)[0])
                > 0.5).cpu()

    def fused_host(x):
        r = decode_masks(x, hw)
        host_bits.copy_(r.bits, non_blocking=True)
        host_boxes.copy_(r.boxes, non_blocking=True)
        host_areas.copy_(r.areas, non_blocking=True)

    t_naive = _time_ms(torch, naive, sets, reps)
    t_fused_host = _time_ms(torch, fused_host, sets, reps)
    t_fused = _time_ms(torch, lambda x: decode_masks(x, hw), sets, reps)
    bytes_moved = n * lowres * lowres * 4 + n * H * words * 4 + n * (16 + 8)
    floor_ms = bytes_moved / (bw * 1e9) * 1e3
    return {"n": n, "lowres": lowres, "H": H, "W": W, "naive_ms": t_naive, "fused_host_ms": t_fused_host,
            "fused_ms": t_fused, "floor_ms": floor_ms, "naive_over_fused_host": t_naive / t_fused_host,
            "fused_over_floor": t_fused / floor_ms, "bytes": bytes_moved}


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
    hdr = f"{'N':>3} {'out':>10} {'naive ms':>9} {'fused+D2H':>10} {'fused':>8} {'floor':>8} " \
          f"{'naive/fused+D2H':>16} {'fused/floor':>12}"
    print(f"\nD2D copy bandwidth: {bw:.0f} GB/s\n{hdr}")
    for r in rows:
        print(f"{r['n']:>3} {r['H']}x{r['W']:<5} {r['naive_ms']:>9.3f} {r['fused_host_ms']:>10.3f} "
              f"{r['fused_ms']:>8.3f} {r['floor_ms']:>8.4f} {r['naive_over_fused_host']:>16.1f} "
              f"{r['fused_over_floor']:>12.1f}")
    dev = torch.cuda.get_device_name()
    out = {"device": dev, "torch": torch.__version__, "triton": triton.__version__,
           "cuda": torch.version.cuda, "python": platform.python_version(),
           "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
           "reps": reps, "copy_bandwidth_gbs": bw, "correctness": report, "results": rows}
    out_dir = Path(os.environ["OUT"]) if os.environ.get("OUT") else REPO / "benchmarks" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"mask_decode_{re.sub(r'[^A-Za-z0-9]+', '_', dev).strip('_')}.json"
    path.write_text(json.dumps(out, indent=1, default=str))
    print(f"wrote {path}")
    return 1 if report["mismatches"] else 0


if __name__ == "__main__":
    sys.exit(main())
