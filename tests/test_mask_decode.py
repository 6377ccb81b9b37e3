"""Fused mask decoding: bit-exactness vs ``F.interpolate(bilinear) > 0``, packing, boxes, validation.

CPU tests compare the numpy backend with torch's CPU kernel; ``gpu`` tests compare the Triton kernel
with torch's CUDA kernel; the interpreter tests run the Triton kernel on CPU (``TRITON_INTERPRET=1``,
in a subprocess so the env var is seen before triton decorates the kernels).
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
import torch.nn.functional as F

from runtime.mask_decode import (
    MAX_SIDE,
    bits_to_rle,
    decode_masks,
    pack_bits,
    rle_to_mask,
    unpack_bits,
)

REPO = Path(__file__).resolve().parents[1]
# AVX2/AVX512 torch CPU kernels are compiled with FMA contraction, the DEFAULT capability is not.
CPU_FMA = torch.backends.cpu.get_cpu_capability() != "DEFAULT"
HAS_TRITON = importlib.util.find_spec("triton") is not None


def require_triton() -> None:
    """triton is part of the ``[test]`` extra: a missing install is an error, not a skip."""
    if not HAS_TRITON:
        pytest.fail("triton is not installed; install the test extra (pip install -e '.[test]')", pytrace=False)


def torch_ref(x: np.ndarray | torch.Tensor, hw: tuple[int, int]) -> np.ndarray:
    """Reference chain per object (``[N, h, w]`` -> bool ``[N, H, W]``), on x's device."""
    t = torch.as_tensor(x)
    outs = [F.interpolate(t[i : i + 1][None], size=hw, mode="bilinear", align_corners=False)[0] > 0
            for i in range(t.shape[0])]
    return torch.cat(outs).cpu().numpy() if outs else np.zeros((0, *hw), bool)


def ref_boxes_areas(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    boxes, areas = [], []
    for o in m:
        ys, xs = np.nonzero(o)
        areas.append(len(ys))
        boxes.append([xs.min(), ys.min(), xs.max(), ys.max()] if len(ys) else [-1, -1, -1, -1])
    return np.array(boxes, np.int32).reshape(-1, 4), np.array(areas, np.int64)


def make_logits(rng: np.random.Generator, n: int, h: int, w: int, kind: str, dtype=np.float32) -> np.ndarray:
    x = rng.standard_normal((n, h, w))
    if kind == "tiny":  # magnitudes from 1e-30 to 1: many values very close to 0
        x = x * 10.0 ** rng.uniform(-30, 0, size=(n, 1, 1))
    elif kind == "blob":  # realistic mask: smooth blob, few mixed-sign cells
        yy, xx = np.mgrid[:h, :w]
        x = 3.0 - ((yy - h / 2) ** 2 + (xx - w / 3) ** 2) / (0.05 * h * w + 1) + 0.1 * x
    elif kind == "empty":
        x = -np.abs(x) - 0.1
    elif kind == "full":
        x = np.abs(x) + 0.1
    elif kind == "zeros":
        x = np.where(rng.random(x.shape) < 0.5, 0.0, x)
    return x.astype(dtype)


CASES = [
    # (n, h, w) -> (H, W), kind
    ((3, 1, 1), (5, 7), "normal"),
    ((5, 1, 1), (200, 300), "normal"),
    ((2, 7, 13), (1080, 1920), "normal"),
    ((1, 7, 13), (1920, 1080), "tiny"),
    ((2, 64, 64), (720, 1280), "blob"),
    ((2, 300, 200), (37, 61), "normal"),  # downsampling, tiny output (torch channels-last kernel)
    ((2, 256, 256), (100, 160), "tiny"),  # downsampling, generic kernel
    ((2, 5, 3), (1, 1), "normal"),
    ((2, 33, 47), (1, 700), "zeros"),
    ((3, 16, 16), (33, 65), "empty"),
    ((3, 16, 16), (130, 65), "full"),
    ((1, 256, 256), (256, 256), "normal"),  # identity
    ((2, 256, 128), (256, 999), "tiny"),  # identity on one axis only
]


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize(("shape", "hw", "kind"), CASES)
def test_numpy_matches_torch_cpu(shape, hw, kind, dtype):
    rng = np.random.default_rng(zlib.crc32(repr((shape, hw, kind, np.dtype(dtype).name)).encode()))
    x = make_logits(rng, *shape, kind, dtype)
    ref = torch_ref(x, hw)
    res = decode_masks(x, hw, backend="numpy", fma=CPU_FMA)
    assert res.bits.shape == (shape[0], hw[0], -(-hw[1] // 32)) and res.bits.dtype == np.int32
    np.testing.assert_array_equal(unpack_bits(res.bits, hw[1]), ref)
    boxes, areas = ref_boxes_areas(ref)
    np.testing.assert_array_equal(res.boxes, boxes)
    np.testing.assert_array_equal(res.areas, areas)
    assert res.present.all() and res.boxes.dtype == np.int32 and res.areas.dtype == np.int64


def test_numpy_random_sizes_many_seeds():
    rng = np.random.default_rng(1234)
    for _ in range(60):
        n, h, w = int(rng.integers(1, 4)), int(rng.integers(1, 48)), int(rng.integers(1, 48))
        hw = (int(rng.integers(1, 300)), int(rng.integers(1, 300)))
        kind = str(rng.choice(["normal", "tiny", "zeros", "blob"]))
        x = make_logits(rng, n, h, w, kind)
        got = decode_masks(x, hw, fma=CPU_FMA).masks()
        np.testing.assert_array_equal(got, torch_ref(x, hw), err_msg=str(hw))


def test_absent_objects_are_skipped():
    rng = np.random.default_rng(0)
    x = make_logits(rng, 4, 9, 11, "full")
    scores = np.array([2.0, 0.0, -3.0, 0.5], np.float32)
    res = decode_masks(x, (40, 70), scores)
    np.testing.assert_array_equal(res.present, [True, False, False, True])
    assert not res.bits[1:3].any()
    np.testing.assert_array_equal(res.boxes[1:3], -1)
    np.testing.assert_array_equal(res.areas, [40 * 70, 0, 0, 40 * 70])
    np.testing.assert_array_equal(res.boxes[0], [0, 0, 69, 39])


def test_bit_layout_lsb_first():
    m = np.zeros((1, 2, 40), bool)
    m[0, 0, 0] = m[0, 0, 33] = m[0, 1, 31] = True
    bits = pack_bits(m)
    assert bits.shape == (1, 2, 2)
    assert bits[0, 0, 0] == 1 and bits[0, 0, 1] == 2
    assert bits[0, 1, 0] == np.int32(-(2**31)) and bits[0, 1, 1] == 0  # bit 31 set, padding bits are 0


def test_pack_unpack_rle_round_trip():
    rng = np.random.default_rng(5)
    m = rng.random((3, 17, 45)) < 0.3
    m[1] = False
    m[2] = True
    bits = pack_bits(m)
    np.testing.assert_array_equal(unpack_bits(bits, 45), m)
    rles = bits_to_rle(bits, 45)
    for r, o in zip(rles, m):
        assert r["size"] == [17, 45] and sum(r["counts"]) == 17 * 45
        np.testing.assert_array_equal(rle_to_mask(r), o)
    assert rles[2]["counts"][0] == 0  # COCO: counts start with the (possibly empty) zero run
    assert rles[1]["counts"] == [17 * 45]


@pytest.mark.parametrize(
    ("logits", "hw", "scores", "match"),
    [
        (np.zeros((2, 3), np.float32), (4, 4), None, r"\[N, h, w\]"),
        (np.zeros((1, 3, 3), np.float64), (4, 4), None, "float32/float16"),
        (np.zeros((1, 3, 3), np.float32), (0, 4), None, "out_hw"),
        (np.zeros((1, 3, 3), np.float32), (4, MAX_SIDE + 1), None, "out_hw"),
        (np.zeros((1, 3, 3), np.float32), (4,), None, "out_hw"),
        (np.zeros((1, 0, 3), np.float32), (4, 4), None, "spatial"),
        (np.zeros((2, 3, 3), np.float32), (4, 4), np.zeros(3, np.float32), "object_scores"),
    ],
)
def test_validation_errors(logits, hw, scores, match):
    with pytest.raises(ValueError, match=match):
        decode_masks(logits, hw, scores)


def test_bad_backend_and_cpu_triton():
    x = np.zeros((1, 3, 3), np.float32)
    with pytest.raises(ValueError, match="backend"):
        decode_masks(x, (4, 4), backend="cuda")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="CUDA"):
        decode_masks(x, (4, 4), backend="triton")


def test_torch_cpu_tensor_goes_through_numpy():
    x = torch.randn(2, 5, 6)
    res = decode_masks(x, (30, 17), torch.tensor([1.0, -1.0]), fma=CPU_FMA)
    assert isinstance(res.bits, np.ndarray)
    np.testing.assert_array_equal(res.masks()[0], torch_ref(x[:1], (30, 17))[0])
    assert not res.masks()[1].any()


def test_zero_objects():
    res = decode_masks(np.zeros((0, 4, 4), np.float32), (10, 70))
    assert res.bits.shape == (0, 10, 3) and res.boxes.shape == (0, 4) and res.areas.shape == (0,)


# ----------------------------------------------------------------------------- Triton (CPU interpreter)
_INTERP_SCRIPT = r"""
import json, sys
import numpy as np, torch, torch.nn.functional as F
from runtime.mask_decode import decode_masks_numpy
from runtime.kernels.mask_decode_triton import decode_masks_triton, interpolate_values_triton
cases = json.loads(sys.argv[1])
check_values = sys.argv[2] == "1"
bad = []
for (n, h, w), (H, W), seed in cases:
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, h, w)) * 10.0 ** rng.uniform(-20, 0, size=(n, 1, 1))).astype(np.float32)
    scores = np.where(np.arange(n) == 1, -1.0, 1.0).astype(np.float32)
    for _ in range(2):  # the second call reuses the cached plan
        r = decode_masks_triton(torch.from_numpy(x), (H, W), torch.from_numpy(scores))
    ref = decode_masks_numpy(x, (H, W), scores)
    for name in ("bits", "boxes", "areas", "present"):
        if not np.array_equal(getattr(r, name).numpy(), getattr(ref, name)):
            bad.append([n, h, w, H, W, name])
    if check_values and H + W > 128:  # torch CPU generic kernel == CUDA formula (fma, first product fused)
        vals = interpolate_values_triton(torch.from_numpy(x), (H, W))
        tv = F.interpolate(torch.from_numpy(x)[None], size=(H, W), mode="bilinear", align_corners=False)[0]
        if not torch.equal(vals, tv):
            bad.append([n, h, w, H, W, "values"])
print(json.dumps(bad))
"""


def _run_interpreter(cases: list) -> list:
    require_triton()
    env = dict(os.environ, TRITON_INTERPRET="1", TRITON_DEFAULT_FP_FUSION="0", PYTHONPATH=str(REPO))
    # Bits are compared with the numpy backend (fma=True): both evaluate the CUDA formula with exact fma,
    # whatever this CPU is. Only the float-value check compares with torch's own CPU kernel, which equals
    # that formula only in AVX2/AVX512 builds (FMA contraction), so it runs only there (CPU_FMA).
    args = [sys.executable, "-c", _INTERP_SCRIPT, json.dumps(cases), "1" if CPU_FMA else "0"]
    out = subprocess.run(args, env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_triton_interpreter_small():
    assert _run_interpreter([[[2, 5, 7], [9, 40], 0]]) == []


@pytest.mark.slow
def test_triton_interpreter_cases():
    cases = [[[3, 7, 13], [21, 130], 1], [[2, 1, 1], [5, 140], 2], [[2, 40, 30], [9, 160], 3],
             [[2, 16, 16], [33, 65], 4], [[2, 9, 5], [3, 40], 5]]
    assert _run_interpreter(cases) == []


# ------------------------------------------------------------------------------------------- GPU
GPU_CASES = [((3, 1, 1), (5, 7)), ((4, 7, 13), (1080, 1920)), ((2, 7, 13), (1920, 1080)),
             ((16, 256, 256), (1080, 1920)), ((4, 256, 256), (720, 1280)), ((3, 300, 200), (37, 61)),
             ((2, 5, 3), (1, 1)), ((2, 33, 47), (1, 700)), ((2, 256, 256), (256, 256))]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("shape", "hw"), GPU_CASES)
def test_triton_matches_torch_cuda(shape, hw, dtype):
    gen = torch.Generator(device="cuda").manual_seed(zlib.crc32(repr((shape, hw)).encode()))
    for scale in (1.0, 1e-6, 1e-30):
        x = (torch.randn(shape, device="cuda", generator=gen) * scale).to(dtype)
        scores = torch.ones(shape[0], device="cuda")
        scores[1::3] = -1.0
        res = decode_masks(x, hw, scores)
        assert res.bits.is_cuda
        ref = torch_ref(x, hw) & (scores > 0).cpu().numpy()[:, None, None]
        np.testing.assert_array_equal(res.masks(), ref)
        boxes, areas = ref_boxes_areas(ref)
        np.testing.assert_array_equal(res.boxes.cpu().numpy(), boxes)
        np.testing.assert_array_equal(res.areas.cpu().numpy(), areas)
        np.testing.assert_array_equal(res.present.cpu().numpy(), (scores > 0).cpu().numpy())


@pytest.mark.gpu
def test_triton_values_match_torch_cuda_floats():
    """Float-level check of the replicated arithmetic (far more sensitive than the sign)."""
    from runtime.kernels.mask_decode_triton import interpolate_values_triton

    gen = torch.Generator(device="cuda").manual_seed(0)
    for shape, hw in [((4, 7, 13), (1080, 1920)), ((2, 256, 256), (720, 1280)), ((2, 300, 200), (37, 61))]:
        x = torch.randn(shape, device="cuda", generator=gen)
        ref = F.interpolate(x[None], size=hw, mode="bilinear", align_corners=False)[0]
        assert torch.equal(interpolate_values_triton(x, hw), ref)


@pytest.mark.gpu
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_mask_decoder_matches_decode_masks(cuda_graph):
    """Steady-state decoder (reused outputs, fast launcher, optional CUDA graph) == decode_masks, frame by frame."""
    from runtime.kernels.mask_decode_triton import MaskDecoder

    n, hw = 5, (720, 1280)
    dec = MaskDecoder(n, (64, 48), hw, with_scores=True, cuda_graph=cuda_graph)
    gen = torch.Generator(device="cuda").manual_seed(3)
    for frame in range(4):
        x = torch.randn((n, 64, 48), device="cuda", generator=gen) * (1e-30 if frame == 2 else 1.0)
        scores = torch.randn(n, device="cuda", generator=gen)
        if frame == 3:  # producer writes straight into the static buffers
            dec.logits.copy_(x)
            dec.scores.copy_(scores)
            res = dec()
        else:
            res = dec(x, scores)
        ref = decode_masks(x, hw, scores)
        for name in ("bits", "boxes", "areas", "present"):
            assert torch.equal(getattr(res, name), getattr(ref, name)), (frame, name)
        assert res is dec.result
    with pytest.raises(ValueError, match="decoder built for"):
        dec(torch.randn((n, 64, 47), device="cuda"), scores)


@pytest.mark.gpu
def test_triton_repeated_and_unaligned_inputs():
    """Cached plans/fast launcher across calls; an input view that is not 16-byte aligned takes the JIT path."""
    buf = torch.randn(1 + 3 * 9 * 11, device="cuda")
    hw = (100, 333)
    for x in (buf[1:].view(3, 9, 11), buf[:-1].view(3, 9, 11), buf[1:].view(3, 9, 11)):
        ref = torch_ref(x, hw)
        for _ in range(2):
            res = decode_masks(x, hw)
            np.testing.assert_array_equal(res.masks(), ref)
