"""Fused Triton kernels for the vision and mask inputs: uint8 frames on the device -> resized float planes.

One launch per output, no intermediate buffer: each program owns a ``[BLOCK_Y, BLOCK_X]`` tile of one frame's
output, gathers its taps straight from the uint8 frames (any strides: RGB interleaved ``[T, H, W, 3]`` as
:func:`runtime.video_io.read_clip` and NVDEC's RGB output give, or planar ``[T, 3, H, W]`` as NVDEC's RGBP),
and writes all 3 channels in the output dtype.

Arithmetic = :mod:`runtime.preprocess` (numpy), operation for operation: the per-axis ``(indices [out, K],
weights [out, K])`` tables are built by the same numpy functions (``AXIS_TABLES``, float32 weights) and uploaded once
per shape; the two passes are evaluated in registers in the order ``resize`` picks (height first when
``h_out * w <= h * w_out``), each tap a float32 product added in tap order, with FMA contraction off
(``enable_fp_fusion=False``). Expected result: **bit-exact** with ``Preprocessor.vision`` / ``.mask``.
Stated tolerance (asserted by the tests, on the GPU and in the CPU interpreter): max |diff| <= 1e-3 on the
0..255 scale (4e-6 after /255); the interpreter tests also assert exact equality. Tap columns whose weight is 0
for every output (the antialias tables' padding) are dropped: ``acc + x * 0 == acc``, so that stays exact.

torch and triton are imported at module import; import this module only on the GPU path (or under
``TRITON_INTERPRET=1`` for the CPU tests).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import triton
import triton.language as tl

from runtime.kernels.mask_decode_triton import KernelLauncher
from runtime.preprocess import AXIS_TABLES, RESIZE_MODES, Preprocessor

__all__ = ["LAYOUTS", "DevicePreprocessor", "preprocess_mask_cuda", "preprocess_vision_cuda", "resize_frames_triton"]

LAYOUTS = ("thwc", "tchw")  # [T, H, W, 3] RGB interleaved | [T, 3, H, W] RGB planar
OUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
COMPILE_OPTIONS = {"enable_fp_fusion": False}  # no FMA contraction: numpy's float32 rounding, operation by operation


@triton.jit
def _tap(base, off, s_c, w, a0, a1, a2):
    """a_c += float(src[off + c * s_c]) * w for the 3 channels (products rounded, then added: no FMA)."""
    a0 = a0 + tl.load(base + off).to(tl.float32) * w
    a1 = a1 + tl.load(base + off + s_c).to(tl.float32) * w
    a2 = a2 + tl.load(base + off + 2 * s_c).to(tl.float32) * w
    return a0, a1, a2


@triton.jit
def _finish(acc, c, lo, hi, mean_ptr, std_ptr, CLAMP: tl.constexpr, NORMALIZE: tl.constexpr):
    """Clamp to [lo, hi] (vision input) and optionally ``(x / 255 - mean[c]) / std[c]`` (Preprocessor.normalize)."""
    if CLAMP:
        acc = tl.minimum(tl.maximum(acc, lo), hi)
    if NORMALIZE:  # IEEE divisions (div_rn): Triton's ``/`` is div.full.f32, 2 ulp off numpy's
        acc = tl.math.div_rn(tl.math.div_rn(acc, 255.0) - tl.load(mean_ptr + c), tl.load(std_ptr + c))
    return acc


@triton.jit
def _resize_kernel(
    src_ptr, out_ptr, fidx_ptr, ty_idx_ptr, ty_w_ptr, tx_idx_ptr, tx_w_ptr, mean_ptr, std_ptr,
    H_out, W_out, tiles_x, s_t, s_c, s_h, s_w, o_t, o_c, lo, hi,
    KH: tl.constexpr, KW: tl.constexpr, H_FIRST: tl.constexpr, HAS_FIDX: tl.constexpr, CLAMP: tl.constexpr,
    NORMALIZE: tl.constexpr, BLOCK_Y: tl.constexpr, BLOCK_X: tl.constexpr,
):
    """uint8 frames (strides ``s_t, s_c, s_h, s_w``) -> out ``[T, 3, H_out, W_out]`` planes (strides ``o_t, o_c``).

    Grid ``(tiles_y * tiles_x, T)``.
    ``out[t, c, y, x] = sum_i wy[y, i] * sum_j wx[x, j] * src[f, iy[y, i], ix[x, j], c]`` (or the other nesting when
    ``H_FIRST``), ``f = fidx[t]`` when ``HAS_FIDX`` else ``t``. Table rows of
    out-of-range pixels are clamped, so the gathers need no masks; only the store is masked.
    """
    pid = tl.program_id(0)
    t = tl.program_id(1)
    ys = (pid // tiles_x) * BLOCK_Y + tl.arange(0, BLOCK_Y)
    xs = (pid % tiles_x) * BLOCK_X + tl.arange(0, BLOCK_X)
    yc = tl.minimum(ys, H_out - 1)
    xc = tl.minimum(xs, W_out - 1)
    f = t
    if HAS_FIDX:
        f = tl.load(fidx_ptr + t)
    base = src_ptr + f.to(tl.int64) * s_t
    a0 = tl.zeros([BLOCK_Y, BLOCK_X], dtype=tl.float32)
    a1 = tl.zeros([BLOCK_Y, BLOCK_X], dtype=tl.float32)
    a2 = tl.zeros([BLOCK_Y, BLOCK_X], dtype=tl.float32)
    if H_FIRST:  # numpy: height pass first -> out = sum_j wx_j * (sum_i wy_i * src[iy_i, ix_j])
        for j in range(KW):
            col = (tl.load(tx_idx_ptr + xc * KW + j) * s_w)[None, :]
            wx = tl.load(tx_w_ptr + xc * KW + j)[None, :]
            p0 = tl.zeros([BLOCK_Y, BLOCK_X], dtype=tl.float32)
            p1 = tl.zeros([BLOCK_Y, BLOCK_X], dtype=tl.float32)
            p2 = tl.zeros([BLOCK_Y, BLOCK_X], dtype=tl.float32)
            for i in range(KH):
                row = (tl.load(ty_idx_ptr + yc * KH + i) * s_h)[:, None]
                wy = tl.load(ty_w_ptr + yc * KH + i)[:, None]
                p0, p1, p2 = _tap(base, row + col, s_c, wy, p0, p1, p2)
            a0 = a0 + p0 * wx
            a1 = a1 + p1 * wx
            a2 = a2 + p2 * wx
    else:  # width pass first -> out = sum_i wy_i * (sum_j wx_j * src[iy_i, ix_j])
        for i in range(KH):
            row = (tl.load(ty_idx_ptr + yc * KH + i) * s_h)[:, None]
            wy = tl.load(ty_w_ptr + yc * KH + i)[:, None]
            p0 = tl.zeros([BLOCK_Y, BLOCK_X], dtype=tl.float32)
            p1 = tl.zeros([BLOCK_Y, BLOCK_X], dtype=tl.float32)
            p2 = tl.zeros([BLOCK_Y, BLOCK_X], dtype=tl.float32)
            for j in range(KW):
                col = (tl.load(tx_idx_ptr + xc * KW + j) * s_w)[None, :]
                wx = tl.load(tx_w_ptr + xc * KW + j)[None, :]
                p0, p1, p2 = _tap(base, row + col, s_c, wx, p0, p1, p2)
            a0 = a0 + p0 * wy
            a1 = a1 + p1 * wy
            a2 = a2 + p2 * wy
    ok = (ys < H_out)[:, None] & (xs < W_out)[None, :]
    o = out_ptr + t.to(tl.int64) * o_t + (ys * W_out)[:, None] + xs[None, :]
    ty = out_ptr.dtype.element_ty
    tl.store(o, _finish(a0, 0, lo, hi, mean_ptr, std_ptr, CLAMP, NORMALIZE).to(ty), mask=ok)
    tl.store(o + o_c, _finish(a1, 1, lo, hi, mean_ptr, std_ptr, CLAMP, NORMALIZE).to(ty), mask=ok)
    tl.store(o + 2 * o_c, _finish(a2, 2, lo, hi, mean_ptr, std_ptr, CLAMP, NORMALIZE).to(ty), mask=ok)


# ------------------------------------------------------------------------------------------------ host side
@dataclass(frozen=True)
class TileConfig:
    block_y: int
    block_x: int
    num_warps: int


TILE_OVERRIDE: TileConfig | None = None  # benchmarks/preprocess.py --sweep sets this to time other tiles


def _tile_config(h_out: int, w_out: int, t: int) -> TileConfig:
    """Smaller tiles when the output is small, so that the grid still covers the GPU's ~132 SMs several times."""
    if TILE_OVERRIDE is not None:
        return TILE_OVERRIDE
    if t * h_out * w_out >= (1 << 21):  # 4 output pixels per thread either way (~60 registers, no spills)
        return TileConfig(16, 64, 8)
    return TileConfig(8, 32, 2)


def axis_table(n_in: int, n_out: int, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """The numpy resize's taps for one axis -> (int32 ``[n_out, K]``, float32 ``[n_out, K]``).

    Identity axes (``n_in == n_out``, which ``resize`` skips) become one tap of weight 1 (``x * 1 == x``).
    Tap columns that are 0 for every output are dropped (exact, see the module docstring).
    """
    if n_in == n_out:
        return np.arange(n_out, dtype=np.int32)[:, None], np.ones((n_out, 1), np.float32)
    idx, w = AXIS_TABLES[mode](n_in, n_out)
    w = w.astype(np.float32)
    keep = np.flatnonzero((w != 0).any(axis=0))
    keep = keep if keep.size else np.arange(1)
    return np.ascontiguousarray(idx[:, keep], dtype=np.int32), np.ascontiguousarray(w[:, keep])


_TABLES: dict = {}


def _device_table(n_in: int, n_out: int, mode: str, device) -> tuple[torch.Tensor, torch.Tensor]:
    key = (n_in, n_out, mode, str(device))
    hit = _TABLES.get(key)
    if hit is None:
        idx, w = axis_table(n_in, n_out, mode)
        if len(_TABLES) >= 256:
            _TABLES.clear()
        hit = _TABLES[key] = (torch.from_numpy(idx).to(device), torch.from_numpy(w).to(device))
    return hit


def _check_frames(frames: Any, layout: str) -> tuple[int, int, int, tuple[int, int, int, int]]:
    """-> (T, H, W, strides (t, c, h, w) in elements); ValueError naming the problem otherwise."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r} is not allowed; choose one of {LAYOUTS} ([T, H, W, 3] or [T, 3, H, W])")
    if not isinstance(frames, torch.Tensor):
        raise ValueError(f"frames must be a torch uint8 tensor on the GPU, got {type(frames).__name__}; use "
                         "runtime.preprocess.Preprocessor for numpy arrays")
    shape = tuple(frames.shape)
    want = "[T, H, W, 3]" if layout == "thwc" else "[T, 3, H, W]"
    c_dim = 3 if layout == "thwc" else 1
    if frames.ndim != 4 or shape[c_dim] != 3 or min(shape) == 0:
        raise ValueError(f"frames must be RGB {want} (layout {layout!r}) with T, H, W > 0, got shape {shape}")
    if frames.dtype != torch.uint8:
        raise ValueError(f"frames must be uint8 in [0, 255], got {frames.dtype}; convert with frames.to(torch.uint8)")
    st = frames.stride()
    if layout == "thwc":
        return shape[0], shape[1], shape[2], (st[0], st[3], st[1], st[2])
    return shape[0], shape[2], shape[3], (st[0], st[1], st[2], st[3])


def _out_hw(size: int | Sequence[int]) -> tuple[int, int]:
    hw = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
    if len(hw) != 2 or not all(isinstance(v, (int, np.integer)) and v > 0 for v in hw):
        raise ValueError(f"size must be a positive int or (height, width), got {size!r}")
    return int(hw[0]), int(hw[1])


class _Plan:
    """Everything that depends only on shapes/strides/options: tables, scalars, grid, launcher."""

    def __init__(self, t_out, h, w, strides, hw_out, mode, clamp, normalize, has_fidx, device, cfg: TileConfig):
        H, W = hw_out
        self.t_out, self.H, self.W = t_out, H, W
        ty_idx, ty_w = _device_table(h, H, mode, device)
        tx_idx, tx_w = _device_table(w, W, mode, device)
        self.tables = [ty_idx, ty_w, tx_idx, tx_w]
        if normalize is not None:
            mean, std = (torch.tensor([float(v) for v in x], dtype=torch.float32, device=device) for x in normalize)
        else:
            mean = std = ty_w  # unused dummies
        self.norm = [mean, std]
        tiles_x = -(-W // cfg.block_x)
        tiles = -(-H // cfg.block_y) * tiles_x
        s_t, s_c, s_h, s_w = strides
        h_first = H * w <= h * W  # the order runtime.preprocess.resize picks
        self.tail = [H, W, tiles_x, s_t, s_c, s_h, s_w, 3 * H * W, H * W, 0.0, 255.0,
                     int(ty_idx.shape[1]), int(tx_idx.shape[1]), h_first, has_fidx, clamp, normalize is not None,
                     cfg.block_y, cfg.block_x]
        self.launcher = KernelLauncher(_resize_kernel, (tiles, t_out, 1),
                                       {"num_warps": cfg.num_warps, **COMPILE_OPTIONS})

    def launch(self, frames: torch.Tensor, out: torch.Tensor, fidx: torch.Tensor | None) -> None:
        f = fidx if fidx is not None else self.tables[0]
        # the compiled kernel is specialised on 16-byte aligned pointers: other alignments take the JIT path
        fast = ((frames.data_ptr() | out.data_ptr() | f.data_ptr()) & 15) == 0
        stream = torch._C._cuda_getCurrentRawStream(frames.device.index) if frames.is_cuda else 0
        self.launcher([frames, out, f, *self.tables, *self.norm, *self.tail], stream, fast)


_PLANS: dict = {}


def _get_plan(frames, layout, hw_out, mode, clamp, normalize, fidx, out_dtype) -> tuple[_Plan, int]:
    t_in, h, w, strides = _check_frames(frames, layout)
    if fidx is not None:
        if not isinstance(fidx, torch.Tensor) or fidx.ndim != 1 or fidx.dtype != torch.int32 or fidx.numel() == 0:
            raise ValueError("indices must be a non-empty 1-D torch.int32 tensor of frame indices on the frames' "
                             f"device, got {getattr(fidx, 'dtype', type(fidx).__name__)} "
                             f"{tuple(getattr(fidx, 'shape', ()))}")
        if fidx.device != frames.device:
            raise ValueError(f"indices are on {fidx.device}, frames on {frames.device}; move them to one device")
    t_out = t_in if fidx is None else int(fidx.numel())
    cfg = _tile_config(*hw_out, t_out)
    # the plan's launcher replays the kernel compiled on its first call, which is specialised on the pointer types:
    # the output dtype is part of the key (without it an fp16 call after an fp32 one wrote fp32 into fp16 memory)
    key = (t_out, h, w, strides, hw_out, mode, clamp, normalize, fidx is not None, frames.device, cfg, out_dtype)
    plan = _PLANS.get(key)
    if plan is None:
        if mode not in RESIZE_MODES:
            raise ValueError(f"resize mode {mode!r} is not allowed; choose one of {RESIZE_MODES}")
        if len(_PLANS) >= 256:
            _PLANS.clear()
        plan = _PLANS[key] = _Plan(t_out, h, w, strides, hw_out, mode, clamp, normalize, fidx is not None,
                                   frames.device, cfg)
    return plan, t_in


def resize_frames_triton(
    frames: torch.Tensor, size: int | Sequence[int], mode: str, *, layout: str = "thwc", clamp: bool = False,
    out_dtype: torch.dtype = torch.float32, normalize: tuple[Sequence[float], Sequence[float]] | None = None,
    indices: torch.Tensor | None = None, out: torch.Tensor | None = None,
) -> torch.Tensor:
    """uint8 frames -> float ``[T', 3, h, w]`` (one launch). The building block of the two functions below.

    Args:
        frames: uint8 ``[T, H, W, 3]`` (``layout="thwc"``) or ``[T, 3, H, W]`` (``"tchw"``), any strides, on CUDA
            (CPU tensors work under ``TRITON_INTERPRET=1``).
        size: output side ``S`` or ``(h, w)``. mode: ``bicubic`` | ``bilinear`` | ``bilinear_aa`` (runtime.preprocess).
        clamp: clamp to 0..255 (the vision input). out_dtype: float32 / float16 / bfloat16 (rounded once, at the end).
        normalize: optional ``(mean, std)`` in [0, 1] units: ``(x / 255 - mean) / std`` after the clamp.
        indices: optional int32 ``[T']`` frames to take (e.g. the sampled slots of a ring buffer); default all T.
        out: optional preallocated contiguous output (e.g. an engine's bound input); must match shape and dtype.
    Returns:
        ``out`` (or a new tensor) of shape ``[T', 3, h, w]``.
    """
    hw_out = _out_hw(size)
    if out_dtype not in OUT_DTYPES:
        raise ValueError(f"out_dtype must be one of {OUT_DTYPES}, got {out_dtype}")
    norm = None if normalize is None else tuple(tuple(float(v) for v in x) for x in normalize)
    if norm is not None and (len(norm) != 2 or any(len(x) != 3 for x in norm) or min(norm[1]) <= 0):
        raise ValueError(f"normalize must be (mean[3], std[3]) with std > 0, got {normalize!r}")
    plan, t_in = _get_plan(frames, layout, hw_out, mode, bool(clamp), norm, indices, out_dtype)
    shape = (plan.t_out, 3, *hw_out)
    if out is None:
        out = torch.empty(shape, dtype=out_dtype, device=frames.device)
    elif (tuple(out.shape) != shape and tuple(out.shape) != (1, *shape)) or out.dtype != out_dtype \
            or not out.is_contiguous() or out.device != frames.device:
        raise ValueError(f"out must be a contiguous {out_dtype} tensor of shape {shape} (or [1, ...]) on "
                         f"{frames.device}, got {out.dtype} {tuple(out.shape)} on {out.device}")
    plan.launch(frames, out, indices)
    return out


def preprocess_vision_cuda(frames: torch.Tensor, size: int, *, mode: str = "bicubic", layout: str = "thwc",
                           out_dtype: torch.dtype = torch.float32, indices: torch.Tensor | None = None,
                           normalize: tuple[Sequence[float], Sequence[float]] | None = None,
                           out: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 frames ``[T, H, W, 3]`` (or ``[T, 3, H, W]``) on the GPU -> vision input ``[1, T, 3, S, S]``.

    Equals ``Preprocessor(size).vision(frames)`` (resize, clamp 0..255, not normalized: the graph normalizes);
    ``out_dtype`` the graph's float type. See :func:`resize_frames_triton` for the arguments.
    """
    if out is not None and out.ndim == 4:
        out = out[None]
    res = resize_frames_triton(frames, size, mode, layout=layout, clamp=True, out_dtype=out_dtype,
                               normalize=normalize, indices=indices, out=None if out is None else out[0])
    return res[None] if out is None else out


def preprocess_mask_cuda(frames: torch.Tensor, size: int, *, mode: str = "bilinear_aa", layout: str = "thwc",
                         out_dtype: torch.dtype = torch.float32, indices: torch.Tensor | None = None,
                         normalize: tuple[Sequence[float], Sequence[float]] | None = None,
                         out: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 frames ``[T, H, W, 3]`` (or ``[T, 3, H, W]``) on the GPU -> mask image input ``[T, 3, Sm, Sm]``.

    Equals ``Preprocessor(..., mask_size=Sm).mask(frames)`` (bilinear with antialias, 0..255, not clamped).
    """
    return resize_frames_triton(frames, size, mode, layout=layout, clamp=False, out_dtype=out_dtype,
                                normalize=normalize, indices=indices, out=out)


class DevicePreprocessor:
    """:class:`runtime.preprocess.Preprocessor` on the device: same sizes and modes, torch tensors in and out.

    ``vision(frames)`` -> ``[1, T, 3, S, S]``; ``mask(frames)`` -> ``[T, 3, Sm, Sm]``; frames uint8 on the GPU in
    ``layout`` (``thwc`` or ``tchw``); outputs in ``dtype`` / ``mask_dtype`` (the graphs' float types).
    """

    def __init__(self, pp: Preprocessor, dtype: torch.dtype = torch.float32, mask_dtype: torch.dtype = torch.float32,
                 layout: str = "thwc"):
        self.pp, self.dtype, self.mask_dtype, self.layout = pp, dtype, mask_dtype, layout

    def vision(self, frames: torch.Tensor, indices: torch.Tensor | None = None,
               out: torch.Tensor | None = None) -> torch.Tensor:
        return preprocess_vision_cuda(frames, self.pp.size, mode=self.pp.resize, layout=self.layout,
                                      out_dtype=self.dtype, indices=indices, out=out)

    def mask(self, frames: torch.Tensor, indices: torch.Tensor | None = None,
             out: torch.Tensor | None = None) -> torch.Tensor:
        if self.pp.mask_size is None:
            raise ValueError("this Preprocessor has no mask_size; the manifest's mask block must give image_size")
        return preprocess_mask_cuda(frames, self.pp.mask_size, mode=self.pp.mask_resize, layout=self.layout,
                                    out_dtype=self.mask_dtype, indices=indices, out=out)
