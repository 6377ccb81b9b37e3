"""Frame sampling and preprocessing in numpy (no torch), matching the reference to ~1e-6.

- :func:`sample_indices`: the release's middle-of-segment rule, ``int((i + 0.5) * n / T)``.
- :func:`resize_bicubic`: ``torch.nn.functional.interpolate(mode="bicubic", align_corners=False,
  antialias=False)``: ``src = (dst + 0.5) * in / out - 0.5`` (no clamp at 0 for cubic), Keys kernel with
  ``A = -0.75``, taps ``floor(src) - 1 .. floor(src) + 2`` clamped to the border.
- :func:`resize_bilinear`: ``interpolate(mode="bilinear", align_corners=False)`` with ``antialias`` False
  (``src`` clamped at 0) or True (triangle filter widened by the scale when downscaling, PIL style, weights
  normalized per output pixel).
- :class:`Preprocessor`: the manifest's ``preprocess`` block -> vision input ``[1, T, 3, S, S]`` float32, and
  the mask head's ``[T, 3, Sm, Sm]`` float32 (manifest ``mask`` block).

All resizes are separable: one axis at a time with a per-axis ``(indices [out, K], weights [out, K])`` table,
computed in float64 and applied in float32 (the reference computes in float32; differences stay ~1e-6
after the /255 normalization).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

CUBIC_A = -0.75
RESIZE_MODES = ("bicubic", "bilinear", "bilinear_aa")


def sample_indices(num_total: int, num_frames: int) -> np.ndarray:
    """Middle-of-segment sampling -> int64 ``[num_frames]`` in ``[0, num_total - 1]`` (repeats when T > n)."""
    if num_total <= 0 or num_frames <= 0:
        raise ValueError(f"sample_indices needs num_total > 0 and num_frames > 0, got {num_total}, {num_frames}")
    idx = ((np.arange(num_frames) + 0.5) * num_total / num_frames).astype(np.int64)
    return np.clip(idx, 0, num_total - 1)


def _cubic_weights(t: np.ndarray) -> np.ndarray:
    """Keys cubic weights of the 4 taps at offsets -1, 0, 1, 2 for fractional positions t [N] -> [N, 4]."""
    a = CUBIC_A

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=1)


def _src_index(scale: np.float32, n_out: int) -> np.ndarray:
    """ATen's float32 ``scale * (i + 0.5) - 0.5`` as one fused multiply-add (one rounding), like its
    vectorized CPU and CUDA kernels: exact product and sum in float64, then a single rounding to float32."""
    d = np.arange(n_out, dtype=np.float32) + np.float32(0.5)
    return (np.float64(scale) * d.astype(np.float64) - 0.5).astype(np.float32)


def _axis_cubic(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    scale = np.float32(n_in) / np.float32(n_out)
    src = _src_index(scale, n_out)
    i0 = np.floor(src).astype(np.int64)
    w = _cubic_weights((src - i0.astype(np.float32)).astype(np.float32))
    idx = np.clip(i0[:, None] + np.arange(-1, 3)[None], 0, n_in - 1)
    return idx, w


def _axis_bilinear(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    scale = np.float32(n_in) / np.float32(n_out)
    src = np.maximum(_src_index(scale, n_out), np.float32(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    l1 = np.clip(src - i0.astype(np.float32), 0, 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return np.stack([i0, i1], 1), np.stack([1 - l1, l1], 1)


def _axis_bilinear_aa(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """ATen's ``_upsample_bilinear2d_aa`` taps: support = max(scale, 1), triangle filter, normalized."""
    scale = n_in / n_out
    support = max(scale, 1.0)
    inv = 1.0 / scale if scale >= 1.0 else 1.0
    k = int(np.ceil(support)) * 2 + 1
    centers = scale * (np.arange(n_out) + 0.5)
    xmin = np.maximum((centers - support + 0.5).astype(np.int64), 0)
    xmax = np.minimum((centers + support + 0.5).astype(np.int64), n_in)
    j = np.arange(k)[None]
    idx = xmin[:, None] + j
    w = np.maximum(0.0, 1.0 - np.abs((idx - centers[:, None] + 0.5) * inv))
    w = np.where(idx < xmax[:, None], w, 0.0)
    w /= np.maximum(w.sum(1, keepdims=True), 1e-12)
    return np.minimum(idx, n_in - 1), w


AXIS_TABLES = {"bicubic": _axis_cubic, "bilinear": _axis_bilinear, "bilinear_aa": _axis_bilinear_aa}


def _apply_axis(x: np.ndarray, axis: int, idx: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted gather along ``axis``: out[..., o, ...] = sum_k w[o, k] * x[..., idx[o, k], ...]."""
    shape = [1] * x.ndim
    shape[axis] = idx.shape[0]
    out = None
    for k in range(idx.shape[1]):
        term = np.take(x, idx[:, k], axis=axis) * w[:, k].astype(np.float32).reshape(shape)
        out = term if out is None else out + term
    return out


def resize(frames: np.ndarray, size: int | tuple[int, int], mode: str = "bicubic") -> np.ndarray:
    """Resize float or uint8 ``[T, H, W, C]`` to float32 ``[T, h, w, C]`` (``size`` int -> square).

    ``mode``: ``bicubic`` | ``bilinear`` | ``bilinear_aa`` (see the module docstring). No clamping here.
    """
    if mode not in AXIS_TABLES:
        raise ValueError(f"resize mode {mode!r} is not allowed; choose one of {RESIZE_MODES}")
    h_out, w_out = (size, size) if isinstance(size, int) else size
    x = np.asarray(frames)
    t, h, w, _ = x.shape
    x = x.astype(np.float32, copy=False)
    fn = AXIS_TABLES[mode]
    # do the cheaper pass first (fewer output elements); both orders agree to float32 rounding
    if h_out * w <= h * w_out:
        if h != h_out:
            x = _apply_axis(x, 1, *fn(h, h_out))
        if w != w_out:
            x = _apply_axis(x, 2, *fn(w, w_out))
    else:
        if w != w_out:
            x = _apply_axis(x, 2, *fn(w, w_out))
        if h != h_out:
            x = _apply_axis(x, 1, *fn(h, h_out))
    return np.ascontiguousarray(x, dtype=np.float32)


def check_frames(frames, what: str = "frames") -> np.ndarray:
    """Validate uint8 RGB ``[T, H, W, 3]`` and return it as a numpy array; raise ValueError otherwise."""
    x = np.asarray(frames)
    if x.ndim != 4 or x.shape[-1] != 3 or min(x.shape[:3]) == 0:
        raise ValueError(f"{what} must be uint8 RGB [T, H, W, 3] with T, H, W > 0, got shape {x.shape}")
    if x.dtype != np.uint8:
        raise ValueError(f"{what} must be uint8 in [0, 255], got {x.dtype}; convert with frames.astype(np.uint8)")
    return x


@dataclass
class Preprocessor:
    """The manifest's preprocessing, in numpy. The graphs clamp and normalize; the runtime only resizes.

    size / resize: the vision input (manifest ``preprocess``: S, ``bicubic``); mask_size / mask_resize: the mask
    image encoder input (manifest ``mask``: Sm, ``bilinear_aa``). mean / std: [0, 1] units, used by
    :meth:`normalize` (what the graphs do inside; for comparisons with the reference).
    """

    size: int
    mean: Sequence[float] = (0.485, 0.456, 0.406)
    std: Sequence[float] = (0.229, 0.224, 0.225)
    resize: str = "bicubic"
    mask_size: int | None = None
    mask_resize: str = "bilinear_aa"

    def __post_init__(self):
        for name in ("resize", "mask_resize"):
            if getattr(self, name) not in RESIZE_MODES:
                raise ValueError(f"Preprocessor.{name}={getattr(self, name)!r} is not allowed; choose one of "
                                 f"{RESIZE_MODES}")

    def vision(self, frames: np.ndarray) -> np.ndarray:
        """uint8 ``[T, H, W, 3]`` -> float32 ``[1, T, 3, S, S]``, resized and clamped to 0..255 (not normalized)."""
        x = _resized(check_frames(frames), self.size, self.resize)
        np.clip(x, 0.0, 255.0, out=x)
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2)[None])

    def mask(self, frames: np.ndarray) -> np.ndarray:
        """uint8 ``[T, H, W, 3]`` -> float32 ``[T, 3, Sm, Sm]``, resized, 0..255 (not normalized)."""
        if self.mask_size is None:
            raise ValueError("this Preprocessor has no mask_size; the manifest's mask block must give image_size")
        x = _resized(check_frames(frames), self.mask_size, self.mask_resize)
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))

    def normalize(self, x: np.ndarray, channel_axis: int = -3) -> np.ndarray:
        """0..255 -> clamp, /255, (x - mean) / std (what the graphs compute first)."""
        shape = [1] * x.ndim
        shape[channel_axis] = 3
        m = np.asarray(self.mean, np.float32).reshape(shape)
        s = np.asarray(self.std, np.float32).reshape(shape)
        return (np.clip(x, 0, 255) / np.float32(255.0) - m) / s


def _resized(x: np.ndarray, size: int, mode: str) -> np.ndarray:
    if x.shape[1:3] == (size, size):
        return x.astype(np.float32)
    return resize(x, size, mode)
