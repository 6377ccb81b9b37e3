"""Fused mask decoding: low-res mask logits -> packed full-resolution bitmasks, boxes, areas.

This replaces the chain ``interpolate(logits[None], (H, W), "bilinear", align_corners=False)[0] > 0``
followed by per-object box/area reductions, without ever materialising a full-resolution float mask.

Backends:

* ``"numpy"`` -- pure numpy, bit-exact with PyTorch's **CPU** bilinear kernel (see :func:`decode_masks`).
* ``"triton"`` -- one Triton launch (``runtime.kernels.mask_decode_triton``), bit-exact with PyTorch's
  **CUDA** bilinear kernel. torch and triton are imported lazily, only on this path.

Bit layout of ``bits``: see :mod:`runtime.mask_bits`.

The exactness argument is written up in ``docs/mask_decode.md``.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from runtime.mask_bits import (
    MAX_SIDE,
    OUT_THRESHOLD,
    MaskDecodeResult,
    bits_to_rle,
    check_out_hw,
    check_shapes,
    dtype_name,
    pack_bits,
    rle_to_mask,
    to_numpy,
    unpack_bits,
)

__all__ = [
    "MAX_SIDE",
    "MaskDecodeResult",
    "axis_weights",
    "bits_to_rle",
    "decode_masks",
    "decode_masks_numpy",
    "pack_bits",
    "rle_to_mask",
    "unpack_bits",
]


Backend = Literal["auto", "numpy", "triton"]

_F32 = np.float32
_POS, _NEG, _MIXED = 1, 0, 2
_ROW_BLOCK = 128


def __getattr__(name: str) -> Any:
    """``MaskDecoder`` (steady-state Triton decoder) is imported lazily: it needs torch and triton."""
    if name == "MaskDecoder":
        from runtime.kernels.mask_decode_triton import MaskDecoder

        return MaskDecoder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ------------------------------------------------------------------------------------------- exact float32
def fma32(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Correctly rounded float32 ``a * b + c`` (one rounding), emulated in float64.

    ``a * b`` is exact in float64 (24 + 24 bits); the float64 sum is made round-to-odd (TwoSum error
    term) which makes the final float64 -> float32 rounding equal to a single rounding.
    """
    p = np.multiply(a, b, dtype=np.float64)
    c64 = np.asarray(c, dtype=np.float64)
    s = p + c64
    bb = s - p
    err = (p - (s - bb)) + (c64 - bb)
    even = (s.view(np.int64) & 1) == 0
    fix = (err != 0) & even
    if np.any(fix):
        s = np.where(fix, np.nextafter(s, np.where(err > 0, np.inf, -np.inf)), s)
    return s.astype(_F32)


def _fma_gt(a: np.ndarray, b: np.ndarray, c: np.ndarray, thr: float) -> np.ndarray:
    """Elementwise ``round_f32(a * b + c) > thr`` for float32 a, b, c without forming the float32 result.

    ``round_f32(v) > thr`` (thr >= 0 a float32 power of two or 0) iff the exact ``v > thr + ulp(thr)/2``.
    """
    t = thr + (np.spacing(_F32(thr)) / 2.0 if thr > 0 else 2.0**-150)
    p = np.multiply(a, b, dtype=np.float64)
    c64 = np.asarray(c, dtype=np.float64)
    s = p + c64
    out = s > t
    tie = s == t
    if np.any(tie):  # float64 rounding landed exactly on the threshold: decide with the TwoSum error
        bb = s - p
        err = (p - (s - bb)) + (c64 - bb)
        out |= tie & (err > 0)
    return out


def axis_weights(in_size: int, out_size: int, fma: bool = True) -> tuple[np.ndarray, ...]:
    """Source indices and lambdas of one axis exactly as ATen computes them (float32 ``opmath``).

    ``scale = float(in) / out``; ``src = max(scale * (i + 0.5) - 0.5, 0)`` (fused multiply-add when
    ``fma``: AVX2/AVX512 CPU builds and nvcc contract it); ``i0 = min(floor(src), in - 1)``;
    ``l1 = clamp(src - i0, 0, 1)``; ``l0 = 1 - l1``; ``i1 = i0 + (i0 < in - 1)``. Equal sizes copy
    (``l0 = 1, l1 = 0``).

    Returns:
        ``(i0 [out] int64, i1 [out] int64, l0 [out] float32, l1 [out] float32)``.
    """
    if in_size == out_size:
        idx = np.arange(out_size, dtype=np.int64)
        return idx, idx.copy(), np.ones(out_size, _F32), np.zeros(out_size, _F32)
    scale = _F32(in_size) / _F32(out_size)
    d = np.arange(out_size).astype(_F32) + _F32(0.5)
    src = fma32(scale, d, _F32(-0.5)) if fma else scale * d - _F32(0.5)
    src = np.maximum(src, _F32(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    l1 = np.clip(src - i0.astype(_F32), _F32(0), _F32(1)).astype(_F32)
    l0 = (_F32(1) - l1).astype(_F32)
    return i0, i0 + (i0 < in_size - 1), l0, l1


def _cell_classes(x: np.ndarray, thr_pos: float) -> np.ndarray:
    """Classify each 2x2 low-res cell ``(r, c) -> (r..r+1, c..c+1)`` (clamped at the border).

    Args:
        x: ``[h, w]`` float32 logits of one object.
    Returns:
        ``[h, w]`` int8: ``_NEG`` (all corners <= 0: every interpolated pixel is <= 0),
        ``_POS`` (all corners > ``thr_pos``: every pixel is > 0 after rounding), else ``_MIXED``.
    """
    xr = np.concatenate([x[1:], x[-1:]], axis=0)
    q = np.stack([x, np.concatenate([x[:, 1:], x[:, -1:]], axis=1), xr,
                  np.concatenate([xr[:, 1:], xr[:, -1:]], axis=1)])
    cls = np.full(x.shape, _MIXED, np.int8)
    cls[np.all(q <= 0, axis=0)] = _NEG
    cls[np.all(q > thr_pos, axis=0)] = _POS
    return cls


# ----------------------------------------------------------------------------------- per-object evaluation
class _Plan:
    """Per-call constants shared by all objects: axis tables and the arithmetic mode.

    Shapes: ``hi0/hi1/h0/h1`` are ``[H]``, ``wi0/wi1/w0/w1`` are ``[W]``.
    """

    def __init__(self, h: int, w: int, H: int, W: int, fma: bool, dtype: str):
        self.hi0, self.hi1, self.h0, self.h1 = axis_weights(h, H, fma)
        self.wi0, self.wi1, self.w0, self.w1 = axis_weights(w, W, fma)
        self.fma, self.H, self.W = fma, H, W
        self.thr = OUT_THRESHOLD[dtype]
        # torch CPU channels-last kernel (used when H + W <= 128) sums 4 products with combined weights.
        self.small = H + W <= 128
        if dtype == "float16" and not self.small:  # generic CPU kernel stores lambdas in the input dtype
            for name in ("h0", "h1", "w0", "w1"):
                setattr(self, name, getattr(self, name).astype(np.float16).astype(_F32))
            self.h0 = _half_one_minus(self.h1, self.h0, h == H)
            self.w0 = _half_one_minus(self.w1, self.w0, w == W)
        # all-positive cells are safe once the smallest corner cannot round to <= thr (weights >= ~1/2).
        self.thr_pos = max(8.0 * self.thr, 2.0**-120)


def _half_one_minus(l1: np.ndarray, l0: np.ndarray, identity: bool) -> np.ndarray:
    return l0 if identity else (_F32(1) - l1).astype(np.float16).astype(_F32)


def _rows_interp(x: np.ndarray, p: _Plan) -> np.ndarray:
    """Horizontal pass for all input rows: ``[h, w] -> [h, W]`` float32, rounded like torch's ``t0``."""
    a, b = x[:, p.wi0], x[:, p.wi1]
    if p.fma:
        return fma32(a, p.w0[None], b * p.w1[None])
    return a * p.w0[None] + b * p.w1[None]


def _generic_gt(r0: np.ndarray, r1: np.ndarray, h0: np.ndarray, h1: np.ndarray, p: _Plan) -> np.ndarray:
    """Vertical pass ``t0 * h0 + t1 * h1 > thr`` (torch's generic NCHW kernel order); any equal shapes."""
    if p.fma:
        return _fma_gt(r0, h0, r1 * h1, p.thr)
    return (r0 * h0 + r1 * h1) > _F32(p.thr)


def _small_gt(x: np.ndarray, ys: np.ndarray, xs: np.ndarray, p: _Plan) -> np.ndarray:
    """torch CPU channels-last kernel (tiny outputs): ``((i00*w00 + i01*w01) + i10*w10) + i11*w11``.

    Args:
        x: ``[h, w]`` float32; ys, xs: ``[K]`` output pixel coordinates. Returns ``[K]`` bool.
    """
    h0, h1, w0, w1 = p.h0[ys], p.h1[ys], p.w0[xs], p.w1[xs]
    r0, r1, c0, c1 = p.hi0[ys], p.hi1[ys], p.wi0[xs], p.wi1[xs]
    terms = [(x[r0, c0], h0 * w0), (x[r0, c1], h0 * w1), (x[r1, c0], h1 * w0), (x[r1, c1], h1 * w1)]
    if not p.fma:
        acc = terms[0][0] * terms[0][1]
        for v, wt in terms[1:]:
            acc = acc + v * wt
        return acc > _F32(p.thr)
    acc = fma32(terms[0][0], terms[0][1], terms[1][0] * terms[1][1])
    acc = fma32(terms[2][0], terms[2][1], acc)
    return _fma_gt(terms[3][0], terms[3][1], acc, p.thr)


def _decode_one(x: np.ndarray, p: _Plan) -> np.ndarray:
    """One object: ``[h, w]`` float32 logits -> ``[H, W]`` bool mask. Only mixed-sign cells do float work."""
    cls = np.ascontiguousarray(_cell_classes(x, p.thr_pos)[p.hi0][:, p.wi0])  # [H, W] int8, no floats
    mask = cls == _POS  # C-contiguous, so mask.ravel() below is a view
    mixed = np.flatnonzero(cls == _MIXED)
    if mixed.size == 0:
        return mask
    if p.small:
        ys, xs = np.divmod(mixed, p.W)
        mask.ravel()[mixed] = _small_gt(x, ys, xs, p)
        return mask
    rows = _rows_interp(x, p)  # [h, W]
    if mixed.size * 4 >= mask.size:  # dense: cheaper than gathering; row blocks bound the temporaries
        for y0 in range(0, p.H, _ROW_BLOCK):
            sl = slice(y0, y0 + _ROW_BLOCK)
            hit = _generic_gt(rows[p.hi0[sl]], rows[p.hi1[sl]], p.h0[sl, None], p.h1[sl, None], p)
            mask[sl] |= (cls[sl] == _MIXED) & hit
        return mask
    ys, xs = np.divmod(mixed, p.W)
    mask.ravel()[mixed] = _generic_gt(rows[p.hi0[ys], xs], rows[p.hi1[ys], xs], p.h0[ys], p.h1[ys], p)
    return mask


def _boxes_areas(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """``[H, W]`` bool -> ``(box [4] int32, area)``; box is -1s when empty."""
    area = int(np.count_nonzero(mask))
    if area == 0:
        return np.full(4, -1, np.int32), 0
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    return np.array([xs[0], ys[0], xs[-1], ys[-1]], np.int32), area


# ------------------------------------------------------------------------------------------------ API
def decode_masks_numpy(
    logits: np.ndarray, out_hw: tuple[int, int], object_scores: np.ndarray | None = None, fma: bool = True
) -> MaskDecodeResult:
    """CPU implementation of :func:`decode_masks` for numpy ``[N, h, w]`` float32/float16 logits.

    ``fma=True`` reproduces PyTorch CPU builds running with AVX2/AVX512 kernels (the compiler contracts
    ``a * b + c * d`` into ``fma(a, b, c * d)``); ``fma=False`` reproduces the ``DEFAULT`` capability
    (``ATEN_CPU_CAPABILITY=default``) where every product and sum is rounded separately.
    """
    logits = np.asarray(logits)
    H, W = check_out_hw(out_hw)
    scores = None if object_scores is None else np.asarray(object_scores).reshape(-1)
    check_shapes(logits.shape, None if object_scores is None else np.asarray(object_scores).shape)
    if logits.dtype not in (np.float32, np.float16):
        raise ValueError(f"numpy backend supports float32/float16 logits, got {logits.dtype}")
    n, h, w = logits.shape
    plan = _Plan(h, w, H, W, fma, logits.dtype.name)
    present = np.ones(n, bool) if scores is None else scores.astype(np.float32) > 0
    bits = np.zeros((n, H, -(-W // 32)), np.int32)
    boxes = np.full((n, 4), -1, np.int32)
    areas = np.zeros(n, np.int64)
    for i in np.flatnonzero(present):
        mask = _decode_one(logits[i].astype(_F32), plan)
        bits[i] = pack_bits(mask)
        boxes[i], areas[i] = _boxes_areas(mask)
    return MaskDecodeResult(bits, boxes, areas, present, W)


def decode_masks(
    logits: Any,
    out_hw: tuple[int, int],
    object_scores: Any | None = None,
    backend: Backend = "auto",
    fma: bool = True,
) -> MaskDecodeResult:
    """Decode all objects of one frame: bilinear upsample ``> 0``, packed, plus boxes and areas.

    Args:
        logits: ``[N, h, w]`` low-res mask logits. numpy float32/float16 (numpy backend) or a torch
            tensor (CUDA float32/float16/bfloat16 -> Triton; CPU tensors go through numpy).
        out_hw: output video resolution ``(H, W)``, each in ``1..MAX_SIDE``.
        object_scores: optional ``[N]`` object-score logits; objects with score ``<= 0`` are skipped
            (all-zero bits, box ``-1``, area 0, ``present`` False).
        backend: ``"auto"`` (Triton for CUDA tensors, else numpy), ``"numpy"`` or ``"triton"``.
        fma: numpy backend only, see :func:`decode_masks_numpy`.

    Returns:
        :class:`MaskDecodeResult` -- numpy arrays, or CUDA tensors for the Triton backend (fresh outputs
        per call; for a stream of frames of one shape ``MaskDecoder`` reuses them and can use a CUDA graph).
        Bits equal ``F.interpolate(logits[None], (H, W), mode="bilinear", align_corners=False)[0] > 0``
        bit for bit (CPU reference for numpy, CUDA reference for Triton).
    """
    if backend not in ("auto", "numpy", "triton"):
        raise ValueError(f"backend must be 'auto', 'numpy' or 'triton', got {backend!r}")
    is_np = isinstance(logits, np.ndarray)
    on_cuda = (not is_np) and getattr(getattr(logits, "device", None), "type", None) == "cuda"
    if backend == "triton" or (backend == "auto" and on_cuda):
        if not on_cuda:
            raise ValueError("backend='triton' needs a CUDA torch tensor (or TRITON_INTERPRET=1 in tests)")
        from runtime.kernels.mask_decode_triton import decode_masks_triton

        return decode_masks_triton(logits, out_hw, object_scores)
    if not is_np:
        if getattr(logits, "dtype", None) is not None and dtype_name(logits.dtype) == "bfloat16":
            raise ValueError("numpy backend has no bfloat16; use the triton backend or convert to float32")
        logits = to_numpy(logits)
        object_scores = None if object_scores is None else to_numpy(object_scores)
    return decode_masks_numpy(logits, out_hw, object_scores, fma=fma)
