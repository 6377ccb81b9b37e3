"""Fused preprocessing kernels (``runtime/kernels/preprocess_triton.py``) against the numpy path.

The stated tolerance is max |diff| <= 1e-3 on the 0..255 scale; the kernels are built to be bit-exact with
``runtime.preprocess`` (same tap tables, same float32 operation order, no FMA), and the CPU interpreter tests
assert exact equality too. CPU tests run the Triton kernel under ``TRITON_INTERPRET=1`` in a subprocess (the env
var must be set before triton decorates the kernels); ``gpu`` tests run it on CUDA, at 1080p included.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from runtime.preprocess import Preprocessor

REPO = Path(__file__).resolve().parents[1]
ATOL = 1e-3  # 0..255 scale


def require_triton() -> None:
    if importlib.util.find_spec("triton") is None:
        pytest.fail("triton is not installed; install the test extra (pip install -e '.[test]')", pytrace=False)


# ----------------------------------------------------------------------------- Triton (CPU interpreter)
_INTERP_SCRIPT = r"""
import json, sys
import numpy as np, torch
from runtime.preprocess import Preprocessor, resize
from runtime.kernels.preprocess_triton import preprocess_mask_cuda, preprocess_vision_cuda, resize_frames_triton
cases = json.loads(sys.argv[1])
report = []
for (t, h, w), size, msize, layout, seed in cases:
    rng = np.random.default_rng(seed)
    big = rng.integers(0, 256, (t + 1, h, w + 3, 3), dtype=np.uint8)  # a strided view: frames 1.., columns 1..w
    frames = big[1:, :, 1:w + 1]
    pp = Preprocessor(size=size, mask_size=msize)
    src = torch.from_numpy(big)[1:, :, 1:w + 1]
    if layout == "tchw":
        src = src.permute(0, 3, 1, 2)
    res = {}
    for _ in range(2):  # the second call reuses the cached plan
        res["vision"] = (preprocess_vision_cuda(src, size, layout=layout).numpy(), pp.vision(frames))
    res["mask"] = (preprocess_mask_cuda(src, msize, layout=layout).numpy(), pp.mask(frames))
    res["bilinear_hw"] = (resize_frames_triton(src, (msize, size), "bilinear", layout=layout).numpy(),
                          resize(frames, (msize, size), "bilinear").transpose(0, 3, 1, 2))
    res["vision_f16"] = (preprocess_vision_cuda(src, size, layout=layout, out_dtype=torch.float16).float().numpy(),
                         torch.from_numpy(pp.vision(frames)).half().float().numpy())
    pick = torch.tensor([t - 1, 0, t - 1], dtype=torch.int32)
    res["indices"] = (preprocess_vision_cuda(src, size, layout=layout, indices=pick).numpy(),
                      pp.vision(frames[[t - 1, 0, t - 1]]))
    norm = (pp.mean, pp.std)
    res["normalize"] = (preprocess_vision_cuda(src, size, layout=layout, normalize=norm).numpy(),
                        pp.normalize(pp.vision(frames)))
    out = torch.full((1, t, 3, size, size), float("nan"))
    res["out"] = (preprocess_vision_cuda(src, size, layout=layout, out=out).numpy(), pp.vision(frames))
    for name, (got, ref) in res.items():
        ok_shape = got.shape == ref.shape
        diff = float(np.abs(got - ref).max()) if ok_shape else float("inf")
        exact = bool(ok_shape and np.array_equal(got, ref))
        report.append([[t, h, w], size, msize, layout, name, ok_shape, diff, exact])
print(json.dumps(report))
"""


def _run_interpreter(cases: list) -> list:
    require_triton()
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", _INTERP_SCRIPT, json.dumps(cases)], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _check_report(report: list, cases: list) -> None:
    assert len({tuple(map(str, r[:4])) for r in report}) == len(cases)
    for case, size, msize, layout, name, ok_shape, diff, exact in report:
        where = f"{case} -> {size}/{msize} {layout} {name}"
        assert ok_shape, where
        assert diff <= ATOL, f"{where}: max |diff| {diff}"
        assert exact, f"{where}: not bit-exact (max |diff| {diff})"


def test_interpreter_small():
    # downscale (width pass first), portrait (height pass first), upscale, identity: both layouts
    cases = [[[2, 23, 31], 9, 12, "thwc", 0], [[2, 31, 19], 7, 16, "tchw", 1], [[1, 9, 11], 20, 20, "thwc", 2],
             [[2, 12, 12], 12, 12, "tchw", 3]]
    _check_report(_run_interpreter(cases), cases)


@pytest.mark.slow
def test_interpreter_more_sizes():
    # strong downscales (antialias: 9-14 taps per axis), odd sizes, mixed up/down scaling
    cases = [[[1, 90, 160], 13, 11, "thwc", 4], [[2, 40, 7], 17, 25, "tchw", 5], [[1, 5, 97], 33, 8, "thwc", 6]]
    _check_report(_run_interpreter(cases), cases)


# ----------------------------------------------------------------------------------------- CPU, in-process
def test_axis_table_matches_numpy_taps():
    require_triton()
    from runtime.kernels.preprocess_triton import axis_table
    from runtime.preprocess import AXIS_TABLES

    idx, w = axis_table(1920, 128, "bilinear_aa")
    ref_idx, ref_w = AXIS_TABLES["bilinear_aa"](1920, 128)
    assert idx.dtype == np.int32 and w.dtype == np.float32 and idx.shape == w.shape
    assert idx.shape[1] < ref_idx.shape[1]  # all-zero padding columns dropped
    kept = ref_w.shape[1] - np.flatnonzero((ref_w != 0).any(0))[::-1][0] - 1
    assert idx.shape[1] == ref_idx.shape[1] - kept
    np.testing.assert_array_equal(idx, ref_idx[:, :idx.shape[1]])
    np.testing.assert_array_equal(w, ref_w[:, :w.shape[1]].astype(np.float32))
    ident_idx, ident_w = axis_table(37, 37, "bicubic")
    np.testing.assert_array_equal(ident_idx[:, 0], np.arange(37))
    assert (ident_w == 1).all()


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"frames": np.zeros((2, 8, 8, 3), np.uint8)}, "torch uint8 tensor"),
    ({"frames": torch.zeros((2, 8, 8, 3), dtype=torch.float32)}, "uint8"),
    ({"frames": torch.zeros((8, 8, 3), dtype=torch.uint8)}, r"\[T, H, W, 3\]"),
    ({"frames": torch.zeros((2, 8, 8, 3), dtype=torch.uint8), "layout": "tchw"}, r"\[T, 3, H, W\]"),
    ({"frames": torch.zeros((2, 8, 8, 3), dtype=torch.uint8), "layout": "nhwc"}, "layout"),
    ({"frames": torch.zeros((0, 8, 8, 3), dtype=torch.uint8)}, "T, H, W > 0"),
    ({"size": 0}, "size"),
    ({"mode": "nearest"}, "resize mode"),
    ({"out_dtype": torch.int8}, "out_dtype"),
    ({"indices": torch.tensor([0, 1])}, "int32"),
    ({"normalize": ((0.5, 0.5), (0.2, 0.2, 0.2))}, "normalize"),
    ({"out": torch.zeros((2, 3, 5, 5))}, "out must be"),
])
def test_bad_arguments_raise_value_error(kwargs, match):
    require_triton()
    from runtime.kernels.preprocess_triton import resize_frames_triton

    args = {"frames": torch.zeros((2, 8, 8, 3), dtype=torch.uint8), "size": 4, "mode": "bicubic", **kwargs}
    with pytest.raises(ValueError, match=match):
        resize_frames_triton(args.pop("frames"), args.pop("size"), args.pop("mode"), **args)


_COMPILE_SCRIPT = r"""
import collections, inspect, json, os, re, subprocess, sys, tempfile
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from runtime.kernels.preprocess_triton import COMPILE_OPTIONS, _resize_kernel

names = list(inspect.signature(_resize_kernel.fn).parameters)
bindir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
out = []
variants = ((4, 4, False, False, "*fp32"), (3, 4, True, True, "*bf16"), (17, 29, False, False, "*fp16"))
for kh, kw, h_first, norm, out_ty in variants:
    sig = {n: "i32" for n in names}
    sig.update(src_ptr="*u8", out_ptr=out_ty, fidx_ptr="*i32", ty_idx_ptr="*i32", tx_idx_ptr="*i32", ty_w_ptr="*fp32",
               tx_w_ptr="*fp32", mean_ptr="*fp32", std_ptr="*fp32", lo="fp32", hi="fp32")
    const = dict(KH=kh, KW=kw, H_FIRST=h_first, HAS_FIDX=True, CLAMP=True, NORMALIZE=norm, BLOCK_Y=16, BLOCK_X=64)
    sig.update({k: "constexpr" for k in const})
    src = ASTSource(_resize_kernel, sig, constexprs={(names.index(k),): v for k, v in const.items()})
    k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 8, **COMPILE_OPTIONS})
    path = os.path.join(tempfile.mkdtemp(), "k.cubin")
    open(path, "wb").write(k.asm["cubin"])
    sass = subprocess.run([os.path.join(bindir, "cuobjdump"), "-sass", path], capture_output=True, text=True).stdout
    res = subprocess.run([os.path.join(bindir, "cuobjdump"), "--dump-resource-usage", path], capture_output=True,
                         text=True).stdout
    ops = collections.Counter(re.findall(r"\s([A-Z][A-Z0-9]+)[.A-Z0-9]*\s", sass))
    out.append({"case": [kh, kw, h_first, norm, out_ty], "FFMA": ops["FFMA"], "FMUL": ops["FMUL"],
                "ptx_fma": len(re.findall(r"fma\.rn\.f32", k.asm["ptx"])),
                "LDL": ops["LDL"] + ops["STL"], "regs": int(re.search(r"REG:(\d+)", res).group(1)),
                "div": sorted(set(re.findall(r"div\.[a-z0-9.]+", k.asm["ptx"])))})
print(json.dumps(out))
"""


def test_plan_cache_is_keyed_by_the_output_dtype():
    """A plan replays the kernel compiled on its first call, specialised on the pointer types: an fp16 call after an
    fp32 one with the same shapes must get its own plan (it once wrote fp32 values into the fp16 output)."""
    require_triton()
    from runtime.kernels.preprocess_triton import _get_plan

    frames = torch.zeros((2, 12, 16, 3), dtype=torch.uint8)
    plans = {dt: _get_plan(frames, "thwc", (8, 8), "bilinear", True, None, None, dt)[0]
             for dt in (torch.float32, torch.float16, torch.bfloat16)}
    assert len({id(p) for p in plans.values()}) == 3
    assert _get_plan(frames, "thwc", (8, 8), "bilinear", True, None, None, torch.float16)[0] is plans[torch.float16]


def test_compiled_for_sm90_has_no_fma_and_no_spills():
    """What the interpreter cannot show: the sm_90 machine code (compiled here, no GPU needed) multiplies and adds
    separately (no FFMA: the float order stays numpy's), keeps everything in registers, divides exactly."""
    require_triton()
    out = subprocess.run([sys.executable, "-c", _COMPILE_SCRIPT], env=dict(os.environ, PYTHONPATH=str(REPO)),
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    for r in json.loads(out.stdout.strip().splitlines()[-1]):
        assert r["ptx_fma"] == 0 and r["FMUL"] > 0, r
        assert r["FFMA"] == 0 or r["case"][3], r  # with normalize, ptxas expands div.rn.f32 into FFMA steps
        assert r["LDL"] == 0 and r["regs"] <= 128, r
        assert r["div"] == (["div.rn.f32", "div.s32"] if r["case"][3] else ["div.s32"]), r


# ------------------------------------------------------------------------------------------------- GPU
GPU_CASES = [  # (T, H, W), vision S, mask Sm
    ((8, 1080, 1920), 224, 1024),  # 7B vision, SAM2-L mask
    ((8, 1080, 1920), 64, 128),  # tiny model
    ((3, 1920, 1080), 224, 1024),  # portrait: height pass first
    ((2, 241, 359), 224, 512),  # odd sizes, mild downscale / upscale
    ((2, 97, 131), 224, 1024),  # strong upscale
    ((1, 224, 224), 224, 224),  # identity
]


def _frames(shape, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t, h, w = shape
    yy, xx = np.mgrid[:h, :w]
    smooth = (127 + 120 * np.sin(xx / 37.0 + yy / 23.0))[None, :, :, None]
    noise = rng.integers(-40, 41, (t, h, w, 3))
    return np.clip(smooth + noise, 0, 255).astype(np.uint8)  # real-image-like: smooth content + texture


def _cuda_inputs(shape, size, msize, layout):
    frames = _frames(shape, zlib.crc32(repr(shape).encode()))
    src = torch.from_numpy(frames).cuda()
    if layout == "tchw":
        src = src.permute(0, 3, 1, 2).contiguous()
    return frames, src, Preprocessor(size=size, mask_size=msize)


@pytest.mark.gpu
@pytest.mark.parametrize("layout", ["thwc", "tchw"])
@pytest.mark.parametrize(("shape", "size", "msize"), GPU_CASES)
def test_cuda_matches_numpy(shape, size, msize, layout):
    """The stated tolerance (1e-3 on 0..255) for float32; fp16/bf16 outputs are the float32 result rounded once."""
    from runtime.kernels.preprocess_triton import preprocess_mask_cuda, preprocess_vision_cuda

    frames, src, pp = _cuda_inputs(shape, size, msize, layout)
    v = preprocess_vision_cuda(src, size, layout=layout)
    m = preprocess_mask_cuda(src, msize, layout=layout)
    assert v.shape == (1, shape[0], 3, size, size) and m.shape == (shape[0], 3, msize, msize)
    for name, got, ref in (("vision", v, pp.vision(frames)), ("mask", m, pp.mask(frames))):
        diff = (got.cpu() - torch.from_numpy(ref)).abs().max().item()
        assert diff <= ATOL, f"{name}: max |diff| {diff} on the 0..255 scale"
    for dtype in (torch.float16, torch.bfloat16):
        assert torch.equal(preprocess_vision_cuda(src, size, layout=layout, out_dtype=dtype), v.to(dtype))
        assert torch.equal(preprocess_mask_cuda(src, msize, layout=layout, out_dtype=dtype), m.to(dtype))


@pytest.mark.gpu
@pytest.mark.parametrize(("shape", "size", "msize"), GPU_CASES)
def test_cuda_bit_exact_with_numpy(shape, size, msize):
    """What the kernels are built for (same taps, same float32 order, no FMA): equality, not just the tolerance."""
    from runtime.kernels.preprocess_triton import preprocess_mask_cuda, preprocess_vision_cuda

    frames, src, pp = _cuda_inputs(shape, size, msize, "thwc")
    assert torch.equal(preprocess_vision_cuda(src, size).cpu(), torch.from_numpy(pp.vision(frames)))
    assert torch.equal(preprocess_mask_cuda(src, msize).cpu(), torch.from_numpy(pp.mask(frames)))


@pytest.mark.gpu
def test_cuda_close_to_torch_interpolate():
    """Against torch's own CUDA kernels (a different float order: ~1e-4 .. 1e-3 apart on the 0..255 scale)."""
    import torch.nn.functional as F

    from runtime.kernels.preprocess_triton import preprocess_mask_cuda, preprocess_vision_cuda

    src = torch.from_numpy(_frames((4, 1080, 1920), 5)).cuda()
    x = src.permute(0, 3, 1, 2).float()
    ref_v = F.interpolate(x, size=(224, 224), mode="bicubic", align_corners=False).clamp(0, 255)
    ref_m = F.interpolate(x, size=(1024, 1024), mode="bilinear", align_corners=False, antialias=True)
    assert (preprocess_vision_cuda(src, 224)[0] - ref_v).abs().max().item() <= 2e-3
    assert (preprocess_mask_cuda(src, 1024) - ref_m).abs().max().item() <= 2e-3


@pytest.mark.gpu
def test_cuda_indices_out_and_unaligned_views():
    """Ring-buffer slots by index, a preallocated output, a view that is not 16-byte aligned (JIT path), repeats,
    and the fused normalization."""
    from runtime.kernels.preprocess_triton import DevicePreprocessor, preprocess_vision_cuda

    frames = _frames((6, 360, 641), 9)
    pp = Preprocessor(size=64, mask_size=256)
    dev = DevicePreprocessor(pp)
    buf = torch.from_numpy(frames).cuda().flatten()
    ring = torch.empty(buf.numel() + 1, dtype=torch.uint8, device="cuda")
    ring[1:].copy_(buf)
    unaligned = ring[1:].view(frames.shape)
    pick = np.array([5, 0, 3, 3])
    idx = torch.from_numpy(pick.astype(np.int32)).cuda()
    out = torch.full((1, 4, 3, 64, 64), float("nan"), device="cuda")
    for src in (unaligned, torch.from_numpy(frames).cuda(), unaligned):
        for _ in range(2):
            assert dev.vision(src, indices=idx, out=out) is out
            assert torch.equal(out.cpu(), torch.from_numpy(pp.vision(frames[pick])))
            got = dev.mask(src, indices=idx)
            assert torch.equal(got.cpu(), torch.from_numpy(pp.mask(frames[pick])))
    norm = preprocess_vision_cuda(unaligned, 64, normalize=(pp.mean, pp.std))
    assert torch.equal(norm.cpu(), torch.from_numpy(pp.normalize(pp.vision(frames))))


@pytest.mark.gpu
def test_cuda_poisoned_output_fully_written():
    from runtime.kernels.preprocess_triton import preprocess_mask_cuda

    src = torch.from_numpy(_frames((2, 1080, 1920), 11)).cuda()
    out = torch.full((2, 3, 1000, 1000), float("nan"), device="cuda")
    preprocess_mask_cuda(src, 1000, out=out)
    assert not torch.isnan(out).any()
