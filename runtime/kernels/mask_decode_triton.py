"""Triton kernels for fused mask decoding (see ``runtime/mask_decode.py`` and ``docs/mask_decode.md``).

Two launches per frame, for all objects together:

1. ``_decode_bits_kernel`` -- grid ``(N, ceil(H / BLOCK_H))``. Each program owns ``BLOCK_H`` output rows
   of one object, recomputes the bilinear value of every pixel in registers exactly like PyTorch's CUDA
   kernel ``upsample_bilinear2d_out_frame`` (float32 ``accscalar_t``), thresholds it, ORs 32 pixels into
   one int32 word and stores only the words, plus a per-row-block partial (area, box) -- no atomics,
   no memset, no full-resolution float tensor.
2. ``_reduce_boxes_kernel`` -- grid ``(N,)``. Folds the row-block partials into ``boxes [N, 4]`` int32,
   ``areas [N]`` int64 and ``present [N]``.

torch and triton are imported at module import; only ``runtime.mask_decode`` imports this module, lazily.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import triton
import triton.language as tl

from runtime.mask_decode import _OUT_THRESHOLD, MaskDecodeResult, _check_out_hw, _check_shapes, _dtype_name

__all__ = ["DEFAULT_VARIANT", "VARIANTS", "decode_masks_triton", "interpolate_values_triton"]

# (IDX_FMA, BLEND): how nvcc contracts PyTorch's CUDA source (see docs/mask_decode.md).
#   IDX_FMA=1: src = fma(scale, dst + 0.5, -0.5); 0: mul then sub.
#   BLEND=0: fma(a, x, b * y) (first product fused); 1: no fusion; 2: fma(b, y, a * x) (second fused).
VARIANTS: tuple[tuple[int, int], ...] = ((1, 0), (1, 1), (1, 2), (0, 0), (0, 1), (0, 2))
DEFAULT_VARIANT: tuple[int, int] = (1, 0)

_BLOCK_H = 4
_BLOCK_WORDS = 16
_BLOCK_RB = 128
_BIG = tl.constexpr(1 << 30)  # globals used inside @jit must be constexpr (real Triton rejects plain ints)


@triton.jit
def _or(a, b):
    return a | b


@triton.jit
def _lerp(a, x, b, y, BLEND: tl.constexpr):
    """``a * x + b * y`` rounded like nvcc would compile it (see VARIANTS)."""
    if BLEND == 0:
        r = tl.fma(a, x, b * y)
    elif BLEND == 1:
        r = a * x + b * y
    else:
        r = tl.fma(b, y, a * x)
    return r


@triton.jit
def _src_index(dst, scale, in_size, IDX_FMA: tl.constexpr):
    """ATen ``area_pixel_compute_source_index`` (align_corners=False) + the CUDA kernel's int cast.

    Returns ``(i0, i1, lambda0, lambda1)`` with the shape of ``dst`` (int32 output coordinates).
    """
    d = dst.to(tl.float32) + 0.5
    if IDX_FMA:
        r = tl.fma(d, scale, -0.5)
    else:
        r = d * scale - 0.5
    r = tl.where(r < 0.0, 0.0, r)
    i0 = r.to(tl.int32)  # r >= 0: truncation == floor, and i0 <= in_size - 1 for align_corners=False
    i1 = i0 + (i0 < in_size - 1).to(tl.int32)
    l1 = r - i0.to(tl.float32)
    l0 = 1.0 - l1
    return i0, i1, l0, l1


@triton.jit
def _decode_bits_kernel(
    logits_ptr, scores_ptr, bits_ptr, part_ptr, values_ptr,
    h_in, w_in, H, W, n_words, n_rb, scale_h, scale_w, thr,
    HAS_SCORES: tl.constexpr, WRITE_VALUES: tl.constexpr, IDX_FMA: tl.constexpr, BLEND: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_WORDS: tl.constexpr,
):
    """logits ``[N, h, w]`` -> bits ``[N, H, n_words]`` int32 + partials ``[N, n_rb, 5]`` int32."""
    n = tl.program_id(0)
    rb = tl.program_id(1)
    w_lim = W
    if HAS_SCORES:  # absent object: no column is valid -> all bits 0, loads masked, empty partials
        w_lim = tl.where(tl.load(scores_ptr + n).to(tl.float32) > 0.0, W, 0)
    ys = rb * BLOCK_H + tl.arange(0, BLOCK_H)  # [BH]
    row_ok = ys < H
    hi0, hi1, h0, h1 = _src_index(ys, scale_h, h_in, IDX_FMA)
    base = logits_ptr + n.to(tl.int64) * h_in * w_in
    row0 = (hi0 * w_in)[:, None, None]
    row1 = (hi1 * w_in)[:, None, None]
    h0b = h0[:, None, None]
    h1b = h1[:, None, None]
    shifts = tl.arange(0, 32)  # [32]
    area = tl.zeros([BLOCK_H], dtype=tl.int32)
    xmin = tl.full([BLOCK_H], _BIG, tl.int32)
    xmax = tl.full([BLOCK_H], -1, tl.int32)
    out_row = bits_ptr + (n.to(tl.int64) * H + ys.to(tl.int64)) * n_words  # [BH]
    for k0 in range(0, n_words, BLOCK_WORDS):
        ks = k0 + tl.arange(0, BLOCK_WORDS)  # [BW]
        xs = ks[:, None] * 32 + shifts[None, :]  # [BW, 32]
        col_ok = (xs < w_lim)[None, :, :]
        wi0, wi1, w0, w1 = _src_index(xs, scale_w, w_in, IDX_FMA)
        ok = row_ok[:, None, None] & col_ok
        x00 = tl.load(base + row0 + wi0[None], mask=ok, other=0.0).to(tl.float32)
        x01 = tl.load(base + row0 + wi1[None], mask=ok, other=0.0).to(tl.float32)
        x10 = tl.load(base + row1 + wi0[None], mask=ok, other=0.0).to(tl.float32)
        x11 = tl.load(base + row1 + wi1[None], mask=ok, other=0.0).to(tl.float32)
        # PyTorch CUDA: h0 * (w0 * x00 + w1 * x01) + h1 * (w0 * x10 + w1 * x11), all float32.
        top = _lerp(w0[None], x00, w1[None], x01, BLEND)
        bot = _lerp(w0[None], x10, w1[None], x11, BLEND)
        val = _lerp(h0b, top, h1b, bot, BLEND)  # [BH, BW, 32]
        if WRITE_VALUES:
            vptr = values_ptr + (n.to(tl.int64) * H + ys.to(tl.int64))[:, None, None] * W + xs[None]
            tl.store(vptr, val, mask=ok)
        on = (val > thr) & ok
        word = tl.reduce(on.to(tl.int32) << shifts[None, None, :], 2, _or)  # [BH, BW]
        tl.store(out_row[:, None] + ks[None, :], word, mask=row_ok[:, None] & (ks < n_words)[None, :])
        area += tl.sum(tl.sum(on.to(tl.int32), axis=2), axis=1)
        xmin = tl.minimum(xmin, tl.min(tl.min(tl.where(on, xs[None], _BIG), axis=2), axis=1))
        xmax = tl.maximum(xmax, tl.max(tl.max(tl.where(on, xs[None], -1), axis=2), axis=1))
    has = area > 0
    part = part_ptr + (n * n_rb + rb) * 5
    tl.store(part + 0, tl.sum(area, axis=0))
    tl.store(part + 1, tl.min(xmin, axis=0))
    tl.store(part + 2, tl.min(tl.where(has, ys, _BIG), axis=0))
    tl.store(part + 3, tl.max(xmax, axis=0))
    tl.store(part + 4, tl.max(tl.where(has, ys, -1), axis=0))


@triton.jit
def _reduce_boxes_kernel(
    part_ptr, scores_ptr, boxes_ptr, areas_ptr, present_ptr, n_rb,
    HAS_SCORES: tl.constexpr, BLOCK_RB: tl.constexpr,
):
    """partials ``[N, n_rb, 5]`` -> boxes ``[N, 4]`` int32, areas ``[N]`` int64, present ``[N]`` uint8."""
    n = tl.program_id(0)
    area = tl.zeros([BLOCK_RB], dtype=tl.int64)
    lo_x = tl.full([BLOCK_RB], _BIG, tl.int32)
    lo_y = tl.full([BLOCK_RB], _BIG, tl.int32)
    hi_x = tl.full([BLOCK_RB], -1, tl.int32)
    hi_y = tl.full([BLOCK_RB], -1, tl.int32)
    for r0 in range(0, n_rb, BLOCK_RB):
        r = r0 + tl.arange(0, BLOCK_RB)
        ok = r < n_rb
        p = part_ptr + (n * n_rb + r) * 5
        area += tl.load(p + 0, mask=ok, other=0).to(tl.int64)
        lo_x = tl.minimum(lo_x, tl.load(p + 1, mask=ok, other=_BIG))
        lo_y = tl.minimum(lo_y, tl.load(p + 2, mask=ok, other=_BIG))
        hi_x = tl.maximum(hi_x, tl.load(p + 3, mask=ok, other=-1))
        hi_y = tl.maximum(hi_y, tl.load(p + 4, mask=ok, other=-1))
    total = tl.sum(area, axis=0)
    empty = total == 0
    tl.store(areas_ptr + n, total)
    tl.store(boxes_ptr + n * 4 + 0, tl.where(empty, -1, tl.min(lo_x, axis=0)))
    tl.store(boxes_ptr + n * 4 + 1, tl.where(empty, -1, tl.min(lo_y, axis=0)))
    tl.store(boxes_ptr + n * 4 + 2, tl.max(hi_x, axis=0))
    tl.store(boxes_ptr + n * 4 + 3, tl.max(hi_y, axis=0))
    if HAS_SCORES:
        tl.store(present_ptr + n, (tl.load(scores_ptr + n).to(tl.float32) > 0.0).to(tl.uint8))
    else:
        tl.store(present_ptr + n, 1)


def _prepare(logits: Any, out_hw: tuple[int, int], object_scores: Any | None):
    H, W = _check_out_hw(out_hw)
    if not isinstance(logits, torch.Tensor):
        raise ValueError(f"triton backend needs a torch tensor, got {type(logits).__name__}")
    _check_shapes(tuple(logits.shape), None if object_scores is None else tuple(object_scores.shape))
    dtype = _dtype_name(logits.dtype)
    if dtype not in _OUT_THRESHOLD:
        raise ValueError(f"logits dtype must be float32/float16/bfloat16, got {dtype}")
    if object_scores is not None and object_scores.device != logits.device:
        raise ValueError("object_scores must be on the same device as logits")
    return H, W, logits.contiguous(), dtype


def _scale(in_size: int, out_size: int) -> float:
    """ATen ``area_pixel_compute_scale<float>``: ``float(in) / out`` in float32 (no scale_factor)."""
    return float(np.float32(in_size) / np.float32(out_size))


def _launch(logits, out_hw, object_scores, variant, values=None):
    H, W, x, dtype = _prepare(logits, out_hw, object_scores)
    n, h, w = x.shape
    n_words = -(-W // 32)
    n_rb = -(-H // _BLOCK_H)
    dev = x.device
    bits = torch.empty((n, H, n_words), dtype=torch.int32, device=dev)
    part = torch.empty((n, n_rb, 5), dtype=torch.int32, device=dev)
    boxes = torch.empty((n, 4), dtype=torch.int32, device=dev)
    areas = torch.empty((n,), dtype=torch.int64, device=dev)
    present = torch.empty((n,), dtype=torch.uint8, device=dev)
    if n == 0:
        return MaskDecodeResult(bits, boxes, areas, present.view(torch.bool), W)
    has_scores = object_scores is not None
    scores = object_scores.contiguous() if has_scores else x  # dummy pointer when absent
    idx_fma, blend = variant
    _decode_bits_kernel[(n, n_rb)](
        x, scores, bits, part, values if values is not None else bits,
        h, w, H, W, n_words, n_rb, _scale(h, H), _scale(w, W), _OUT_THRESHOLD[dtype],
        HAS_SCORES=has_scores, WRITE_VALUES=values is not None, IDX_FMA=idx_fma, BLEND=blend,
        BLOCK_H=_BLOCK_H, BLOCK_WORDS=_BLOCK_WORDS, enable_fp_fusion=False,
    )
    _reduce_boxes_kernel[(n,)](
        part, scores, boxes, areas, present, n_rb, HAS_SCORES=has_scores, BLOCK_RB=_BLOCK_RB,
    )
    return MaskDecodeResult(bits, boxes, areas, present.view(torch.bool), W)


def decode_masks_triton(
    logits: torch.Tensor,
    out_hw: tuple[int, int],
    object_scores: torch.Tensor | None = None,
    variant: tuple[int, int] = DEFAULT_VARIANT,
) -> MaskDecodeResult:
    """Triton backend of ``runtime.mask_decode.decode_masks``: 2 launches, outputs stay on the device.

    Args:
        logits: ``[N, h, w]`` float32/float16/bfloat16 tensor (CUDA; CPU works under TRITON_INTERPRET=1).
        out_hw: ``(H, W)``.
        object_scores: optional ``[N]`` float tensor; ``<= 0`` means absent.
        variant: arithmetic variant from ``VARIANTS`` (calibration/testing only).
    Returns:
        ``MaskDecodeResult`` with bits ``[N, H, ceil(W/32)]`` int32, boxes ``[N, 4]`` int32,
        areas ``[N]`` int64, present ``[N]`` bool.
    """
    return _launch(logits, out_hw, object_scores, variant)


def interpolate_values_triton(
    logits: torch.Tensor, out_hw: tuple[int, int], variant: tuple[int, int] = DEFAULT_VARIANT
) -> torch.Tensor:
    """Debug/calibration: the kernel's float32 bilinear values ``[N, H, W]`` (materialised on purpose).

    Compare with ``F.interpolate(logits[None].float(), ...)`` to check the arithmetic bit for bit.
    """
    H, W = _check_out_hw(out_hw)
    values = torch.empty((logits.shape[0], H, W), dtype=torch.float32, device=logits.device)
    _launch(logits, out_hw, None, variant, values=values)
    return values
