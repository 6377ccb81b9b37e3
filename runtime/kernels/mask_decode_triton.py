"""Triton kernels for fused mask decoding (see ``runtime/mask_decode.py`` and ``docs/mask_decode.md``).

Two launches per frame, for all objects together:

1. ``_decode_bits_kernel`` -- grid ``(N, ceil(H / BLOCK_H))``. Each program owns ``BLOCK_H`` output rows
   of one object, recomputes the bilinear value of every pixel in registers exactly like PyTorch's CUDA
   kernel ``upsample_bilinear2d_out_frame`` (float32 ``accscalar_t``), thresholds it, ORs 32 pixels into
   one int32 word and stores only the words, plus a per-row-block partial (area, box) -- no atomics,
   no memset, no full-resolution float tensor.
2. ``_reduce_boxes_kernel`` -- grid ``(N,)``. Folds the row-block partials into ``boxes [N, 4]`` int32,
   ``areas [N]`` int64 and ``present [N]``.

Host side: a cached ``_Plan`` per shape/dtype holds every scalar and launches through the compiled kernel's
own launcher after the first call (``KernelLauncher``), so a cached call skips validation and Triton's JIT
dispatch. ``MaskDecoder`` adds outputs allocated once and an optional CUDA graph for a stream's steady state.

torch and triton are imported at module import; only ``runtime.mask_decode`` imports this module, lazily;
shared types come from ``runtime.mask_bits``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import triton
import triton.language as tl

from runtime.mask_bits import OUT_THRESHOLD, MaskDecodeResult, check_out_hw, check_shapes, dtype_name

__all__ = [
    "CONFIG", "DEFAULT_VARIANT", "VARIANTS", "KernelConfig", "MaskDecoder", "decode_masks_triton",
    "interpolate_values_triton", "set_config",
]

# (IDX_FMA, BLEND): how nvcc contracts PyTorch's CUDA source (see docs/mask_decode.md).
#   IDX_FMA=1: src = fma(scale, dst + 0.5, -0.5); 0: mul then sub.
#   BLEND=0: fma(a, x, b * y) (first product fused); 1: no fusion; 2: fma(b, y, a * x) (second fused).
VARIANTS: tuple[tuple[int, int], ...] = ((1, 0), (1, 1), (1, 2), (0, 0), (0, 1), (0, 2))
DEFAULT_VARIANT: tuple[int, int] = (1, 0)

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
    l1 = r - i0.to(tl.float32)
    l0 = 1.0 - l1
    i0 = tl.minimum(i0, in_size - 1)  # identity for real pixels; keeps padding pixels' loads in bounds
    i1 = i0 + (i0 < in_size - 1).to(tl.int32)
    return i0, i1, l0, l1


@triton.jit
def _popc(v):
    """Population count of int32 words (SWAR; libdevice's popc is not available to the interpreter)."""
    u = v.to(tl.uint32, bitcast=True)
    u = u - ((u >> 1) & 0x55555555)
    u = (u & 0x33333333) + ((u >> 2) & 0x33333333)
    u = (u + (u >> 4)) & 0x0F0F0F0F
    return ((u * 0x01010101) >> 24).to(tl.int32)


@triton.jit
def _high_bit(v):
    """Index of the highest set bit of nonzero int32 words (via float64's exponent)."""
    d = v.to(tl.uint32, bitcast=True).to(tl.float64)  # exact: 32-bit integers fit float64's mantissa
    return ((d.to(tl.int64, bitcast=True) >> 52) - 1023).to(tl.int32)


@triton.jit
def _decode_bits_kernel(
    logits_ptr, scores_ptr, bits_ptr, part_ptr, values_ptr,
    h_in, w_in, H, W, n_words, n_rb, scale_h, scale_w, thr,
    HAS_SCORES: tl.constexpr, WRITE_VALUES: tl.constexpr, IDX_FMA: tl.constexpr, BLEND: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_WORDS: tl.constexpr,
):
    """logits ``[N, h, w]`` -> bits ``[N, H, n_words]`` int32 + partials ``[N, n_rb, 5]`` int32.

    A ``[BH, BW, 32]`` pixel tile per step; the word is an OR-reduction over the bit axis. Source indices
    are clamped, so the gathers need no masks: rows >= H are dropped by the store mask, padding bits
    (x >= W, or every bit of an absent object) by a per-word mask. Area and box partials come from the
    words: popcount per word, lowest/highest set bit of the row-OR of the tile's words.
    """
    n = tl.program_id(0)
    rb = tl.program_id(1)
    w_lim = W
    if HAS_SCORES:  # absent object: no column is valid -> all bits 0, empty partials
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
    xmin = tl.full([], _BIG, tl.int32)
    xmax = tl.full([], -1, tl.int32)
    out_row = bits_ptr + (n.to(tl.int64) * H + ys.to(tl.int64)) * n_words  # [BH]
    for k0 in range(0, n_words, BLOCK_WORDS):
        ks = k0 + tl.arange(0, BLOCK_WORDS)  # [BW]
        xs = ks[:, None] * 32 + shifts[None, :]  # [BW, 32]
        wi0, wi1, w0, w1 = _src_index(xs, scale_w, w_in, IDX_FMA)
        x00 = tl.load(base + row0 + wi0[None]).to(tl.float32)
        x01 = tl.load(base + row0 + wi1[None]).to(tl.float32)
        x10 = tl.load(base + row1 + wi0[None]).to(tl.float32)
        x11 = tl.load(base + row1 + wi1[None]).to(tl.float32)
        # PyTorch CUDA: h0 * (w0 * x00 + w1 * x01) + h1 * (w0 * x10 + w1 * x11), all float32.
        top = _lerp(w0[None], x00, w1[None], x01, BLEND)
        bot = _lerp(w0[None], x10, w1[None], x11, BLEND)
        val = _lerp(h0b, top, h1b, bot, BLEND)  # [BH, BW, 32]
        if WRITE_VALUES:
            vptr = values_ptr + (n.to(tl.int64) * H + ys.to(tl.int64))[:, None, None] * W + xs[None]
            tl.store(vptr, val, mask=row_ok[:, None, None] & (xs < W)[None, :, :])
        word = tl.reduce((val > thr).to(tl.int32) << shifts[None, None, :], 2, _or)  # [BH, BW]
        nb = tl.minimum(tl.maximum(w_lim - ks * 32, 0), 32)  # valid pixels of each word
        valid = tl.where(nb >= 32, -1, (1 << tl.minimum(nb, 31)) - 1)  # [BW]
        word = tl.where(row_ok[:, None], word & valid[None, :], 0)
        tl.store(out_row[:, None] + ks[None, :], word, mask=row_ok[:, None] & (ks < n_words)[None, :])
        area += tl.sum(_popc(word), axis=1)
        col = tl.reduce(word, 0, _or)  # [BW]: OR over the tile's rows
        nz = col != 0
        xmin = tl.minimum(xmin, tl.min(tl.where(nz, ks * 32 + _high_bit(col & -col), _BIG), axis=0))
        xmax = tl.maximum(xmax, tl.max(tl.where(nz, ks * 32 + _high_bit(col), -1), axis=0))
    has = area > 0
    part = part_ptr + (n * n_rb + rb) * 5
    tl.store(part + 0, tl.sum(area, axis=0))
    tl.store(part + 1, xmin)
    tl.store(part + 2, tl.min(tl.where(has, ys, _BIG), axis=0))
    tl.store(part + 3, xmax)
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


# ------------------------------------------------------------------------------------------------ host side
@dataclass(frozen=True)
class KernelConfig:
    """Tile shape of ``_decode_bits_kernel`` (every choice gives the same bits)."""

    block_h: int = 4  # output rows per program
    block_words: int = 16  # 32-pixel words per inner step
    num_warps: int = 4


CONFIG = KernelConfig()


def set_config(**kwargs: int) -> KernelConfig:
    """Replace fields of the module's ``CONFIG`` (benchmarks sweep tile shapes with this)."""
    global CONFIG
    CONFIG = replace(CONFIG, **kwargs)
    return CONFIG


def _scale(in_size: int, out_size: int) -> float:
    """ATen ``area_pixel_compute_scale<float>``: ``float(in) / out`` in float32 (no scale_factor)."""
    return float(np.float32(in_size) / np.float32(out_size))


_RUNTIME_KNOBS = getattr(getattr(triton, "knobs", None), "runtime", None)


def _hooks_set() -> bool:
    """True when a launch hook (profiler) is installed: then launches go through the JIT dispatcher."""
    if _RUNTIME_KNOBS is None:
        return False
    for hook in (_RUNTIME_KNOBS.launch_enter_hook, _RUNTIME_KNOBS.launch_exit_hook):
        if hook is not None and getattr(hook, "calls", True):  # Triton 3.6: an (empty) HookChain by default
            return True
    return False


class KernelLauncher:
    """One kernel with a fixed grid and fixed options.

    The first launch goes through Triton's JIT dispatcher (compile or cache hit), which returns the compiled
    kernel; later launches call its launcher directly, skipping argument binding, specialisation and the
    cache lookup (tens of microseconds of Python per launch). That is only valid while every argument
    specialises the same way: the plan fixes all integers, and callers pass ``fast=False`` for input
    tensors that are not 16-byte aligned.
    """

    __slots__ = ("fn", "grid", "options", "ck", "fast_calls")

    def __init__(self, fn, grid: tuple[int, int, int], options: dict):
        self.fn, self.grid, self.options, self.ck, self.fast_calls = fn, grid, options, None, 0

    def __call__(self, args: list, stream: int, fast: bool) -> None:
        ck = self.ck
        if ck is not None and fast and not _hooks_set():
            g = self.grid
            ck.run(g[0], g[1], g[2], stream, ck.function, ck.packed_metadata, None, None, None, *args)
            self.fast_calls += 1
            return
        compiled = self.fn[self.grid](*args, **self.options)
        if fast and all(hasattr(compiled, a) for a in ("run", "function", "packed_metadata")):
            self.ck = compiled  # interpreter (returns None) and unknown Triton versions stay on the JIT path


class _Plan:
    """Everything that depends only on shapes/dtypes: scalars, grids, argument tails, launchers."""

    def __init__(self, n, h, w, H, W, dtype, has_scores, variant, write_values, cfg: KernelConfig):
        self.n, self.H, self.W, self.has_scores = n, H, W, has_scores
        self.n_words = -(-W // 32)
        self.n_rb = -(-H // cfg.block_h)
        thr = OUT_THRESHOLD[dtype]
        idx_fma, blend = variant
        self.decode_tail = [h, w, H, W, self.n_words, self.n_rb, _scale(h, H), _scale(w, W), thr,
                            has_scores, write_values, idx_fma, blend, cfg.block_h, cfg.block_words]
        self.reduce_tail = [self.n_rb, has_scores, _BLOCK_RB]
        opts = {"num_warps": cfg.num_warps, "enable_fp_fusion": False}
        self.decode = KernelLauncher(_decode_bits_kernel, (n, self.n_rb, 1), opts)
        self.reduce = KernelLauncher(_reduce_boxes_kernel, (n, 1, 1), {"num_warps": 4})
        self._scratch: dict = {}  # stream -> partials [n, n_rb, 5] int32 (internal; stream-ordered reuse)

    def alloc(self, device) -> tuple:
        """Fresh outputs ``(bits, boxes, areas, present)``."""
        n = self.n
        return (torch.empty((n, self.H, self.n_words), dtype=torch.int32, device=device),
                torch.empty((n, 4), dtype=torch.int32, device=device),
                torch.empty((n,), dtype=torch.int64, device=device),
                torch.empty((n,), dtype=torch.bool, device=device))

    def result(self, out: tuple) -> MaskDecodeResult:
        return MaskDecodeResult(*out, self.W)

    def launch(self, x, scores, out: tuple, values=None) -> None:
        if self.n == 0:
            return
        bits, boxes, areas, present = out
        s = scores if scores is not None else x  # dummy pointer when absent
        fast = (x.data_ptr() & 15) == 0 and (s.data_ptr() & 15) == 0
        dev = x.device.index if x.is_cuda else 0
        stream = torch._C._cuda_getCurrentRawStream(dev) if x.is_cuda else 0
        part = self._scratch.get(stream)
        if part is None:  # one per stream: launches on one stream are ordered, so reuse cannot race
            part = self._scratch[stream] = torch.empty((self.n * self.n_rb * 5,), dtype=torch.int32, device=x.device)
        self.decode([x, s, bits, part, values if values is not None else bits, *self.decode_tail], stream, fast)
        self.reduce([part, s, boxes, areas, present, *self.reduce_tail], stream, fast)


_PLANS: dict = {}


def _get_plan(logits: Any, out_hw: Any, object_scores: Any, variant, write_values: bool = False) -> _Plan:
    """Validated plan for these shapes/dtypes; cached, so a hit costs one dict lookup and no validation."""
    cfg = CONFIG
    sc = None if object_scores is None else (object_scores.shape, object_scores.dtype, object_scores.device)
    try:
        key = (logits.shape, logits.dtype, logits.device, out_hw, sc, variant, write_values, cfg)
        return _PLANS[key]
    except TypeError:  # unhashable out_hw (a list): validate and build, do not cache
        key = None
    except (KeyError, AttributeError):
        pass
    H, W = check_out_hw(out_hw)
    if not isinstance(logits, torch.Tensor):
        raise ValueError(f"triton backend needs a torch tensor, got {type(logits).__name__}")
    check_shapes(tuple(logits.shape), None if object_scores is None else tuple(object_scores.shape))
    dtype = dtype_name(logits.dtype)
    if dtype not in OUT_THRESHOLD:
        raise ValueError(f"logits dtype must be float32/float16/bfloat16, got {dtype}")
    if object_scores is not None and object_scores.device != logits.device:
        raise ValueError("object_scores must be on the same device as logits")
    n, h, w = logits.shape
    plan = _Plan(n, h, w, H, W, dtype, object_scores is not None, tuple(variant), write_values, cfg)
    if key is not None:
        if len(_PLANS) >= 256:
            _PLANS.clear()
        _PLANS[key] = plan
    return plan


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
        areas ``[N]`` int64, present ``[N]`` bool -- freshly allocated. For a steady stream of frames of
        one shape, :class:`MaskDecoder` reuses its outputs and can replay a CUDA graph.
    """
    plan = _get_plan(logits, out_hw, object_scores, variant)
    x = logits if logits.is_contiguous() else logits.contiguous()
    if object_scores is not None and not object_scores.is_contiguous():
        object_scores = object_scores.contiguous()
    out = plan.alloc(x.device)
    plan.launch(x, object_scores, out)
    return plan.result(out)


class MaskDecoder:
    """Steady-state decoder for one shape: outputs allocated once, optionally one CUDA graph per frame.

    ``dec = MaskDecoder(n, (h, w), (H, W), with_scores=True, cuda_graph=True)``; then per frame
    ``res = dec(logits, scores)``. The returned :class:`MaskDecodeResult` is the same object every call and
    its tensors are overwritten by the next call (clone what must outlive the frame). With ``cuda_graph``
    the inputs are copied into ``dec.logits`` / ``dec.scores`` (static buffers the graph reads) unless they
    are those buffers already: a producer that writes straight into them saves the copy. Calls must come
    from the stream and device the decoder was built on; bits equal :func:`decode_masks_triton`'s.
    """

    def __init__(self, num_objects: int, in_hw: tuple[int, int], out_hw: tuple[int, int], *,
                 dtype: torch.dtype = torch.float32, device: Any = "cuda", with_scores: bool = False,
                 cuda_graph: bool = False, variant: tuple[int, int] = DEFAULT_VARIANT):
        self.logits = torch.empty((int(num_objects), *(int(v) for v in in_hw)), dtype=dtype, device=device)
        self.scores = torch.ones((int(num_objects),), dtype=torch.float32, device=device) if with_scores else None
        self._plan = _get_plan(self.logits, tuple(out_hw), self.scores, tuple(variant))
        self._out = self._plan.alloc(self.logits.device)
        self.result = self._plan.result(self._out)
        self._graph = None
        if cuda_graph and self._plan.n > 0:
            self.logits.zero_()
            self._launch(self.logits, self.scores)  # compile + prime the fast launcher outside the capture
            torch.cuda.synchronize(self.logits.device)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._launch(self.logits, self.scores)
            self._graph = graph

    def _launch(self, logits, scores) -> None:
        self._plan.launch(logits, scores, self._out)

    def __call__(self, logits: torch.Tensor | None = None, object_scores: torch.Tensor | None = None):
        """Decode one frame (``logits`` ``[N, h, w]`` of the decoder's dtype; None: use ``self.logits``)."""
        x = self.logits if logits is None else logits
        s = self.scores if object_scores is None else object_scores
        if x.shape != self.logits.shape or x.dtype != self.logits.dtype or x.device != self.logits.device:
            raise ValueError(f"decoder built for {tuple(self.logits.shape)} {self.logits.dtype} on "
                             f"{self.logits.device}, got {tuple(x.shape)} {x.dtype} on {x.device}")
        if (s is None) != (self.scores is None) or (
                s is not None and (s.shape != self.scores.shape or s.dtype != self.scores.dtype)):
            raise ValueError("object_scores must be given iff the decoder was built with_scores: float32 [N]")
        if self._graph is None:
            self._launch(x if x.is_contiguous() else x.contiguous(),
                         s if s is None or s.is_contiguous() else s.contiguous())
            return self.result
        if x is not self.logits:
            self.logits.copy_(x)
        if s is not None and s is not self.scores:
            self.scores.copy_(s)
        self._graph.replay()
        return self.result


def interpolate_values_triton(
    logits: torch.Tensor, out_hw: tuple[int, int], variant: tuple[int, int] = DEFAULT_VARIANT
) -> torch.Tensor:
    """Debug/calibration: the kernel's float32 bilinear values ``[N, H, W]`` (materialised on purpose).

    Compare with ``F.interpolate(logits[None].float(), ...)`` to check the arithmetic bit for bit. Tiles are
    never skipped here (every value is written).
    """
    plan = _get_plan(logits, out_hw, None, variant, write_values=True)
    values = torch.empty((plan.n, plan.H, plan.W), dtype=torch.float32, device=logits.device)
    x = logits.contiguous()
    plan.launch(x, None, plan.alloc(x.device), values=values)
    return values
