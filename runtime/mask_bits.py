"""Packed bitmasks and the result type of mask decoding (numpy only; shared by the numpy and Triton backends).

Bit layout of ``bits`` (``[N, H, ceil(W / 32)]`` int32): bit ``j`` (LSB = bit 0) of word ``k`` in row ``y`` is
output pixel ``(y, x = 32 * k + j)``. Padding bits past ``W`` are 0. Read as uint32 words on a little-endian host
the layout equals ``np.packbits(mask, axis=-1, bitorder="little")`` viewed as ``<u4``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

MAX_SIDE = 16384
"""Largest accepted input/output side (also keeps every index computation inside int32)."""
# "final float value > T" thresholds per logits dtype, see docs/mask_decode.md ("reduced precision").
# A float32 result v is > 0 after rounding to the logits dtype iff v > T (ties round to even = 0).
OUT_THRESHOLD = {"float32": 0.0, "float16": 2.0**-25, "bfloat16": 2.0**-134}


@dataclass(frozen=True)
class MaskDecodeResult:
    """Output of :func:`decode_masks` (numpy arrays for numpy input, torch tensors for CUDA input).

    Attributes:
        bits: ``[N, H, ceil(W/32)]`` int32 packed masks (bit j of word k = pixel x = 32*k + j, LSB first).
        boxes: ``[N, 4]`` int32 ``(x0, y0, x1, y1)`` inclusive pixel coordinates, ``-1`` s when empty.
        areas: ``[N]`` int64 pixel counts.
        present: ``[N]`` bool, False where the object score said "absent" (its mask is all zero).
        width: output width W (needed to unpack ``bits``).
    """

    bits: Any
    boxes: Any
    areas: Any
    present: Any
    width: int

    @property
    def height(self) -> int:
        return int(self.bits.shape[1])

    def to_numpy(self) -> MaskDecodeResult:
        """Return a copy whose fields are numpy arrays (no-op for the numpy backend)."""
        conv = [to_numpy(x) for x in (self.bits, self.boxes, self.areas, self.present)]
        return MaskDecodeResult(*conv, width=self.width)

    def masks(self) -> np.ndarray:
        """Unpack to bool ``[N, H, W]`` (host memory)."""
        return unpack_bits(to_numpy(self.bits), self.width)


def to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x
    return x.detach().cpu().numpy()


def check_out_hw(out_hw: tuple[int, int]) -> tuple[int, int]:
    try:
        H, W = (int(v) for v in out_hw)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"out_hw must be a pair of ints (H, W), got {out_hw!r}") from exc
    if not (0 < H <= MAX_SIDE and 0 < W <= MAX_SIDE):
        raise ValueError(f"out_hw must satisfy 0 < H, W <= {MAX_SIDE}, got {(H, W)}")
    return H, W


def check_shapes(shape: tuple[int, ...], scores_shape: tuple[int, ...] | None) -> None:
    if len(shape) != 3:
        raise ValueError(f"logits must be [N, h, w], got shape {tuple(shape)}")
    _, h, w = shape
    if not (0 < h <= MAX_SIDE and 0 < w <= MAX_SIDE):
        raise ValueError(f"logits spatial size must satisfy 0 < h, w <= {MAX_SIDE}, got {(h, w)}")
    if scores_shape is not None and tuple(scores_shape) != (shape[0],):
        raise ValueError(f"object_scores must be [N] = [{shape[0]}], got shape {tuple(scores_shape)}")


def dtype_name(dtype: Any) -> str:
    return str(dtype).replace("torch.", "")


def pack_bits(mask: np.ndarray) -> np.ndarray:
    """Pack bool ``[..., H, W]`` into int32 ``[..., H, ceil(W/32)]`` (bit j of word k = pixel 32*k + j)."""
    mask = np.asarray(mask, dtype=bool)
    W = mask.shape[-1]
    words = -(-W // 32)
    pad = [(0, 0)] * (mask.ndim - 1) + [(0, words * 32 - W)]
    packed = np.packbits(np.pad(mask, pad), axis=-1, bitorder="little")
    return np.ascontiguousarray(packed).view("<u4").astype(np.uint32).view(np.int32)


def unpack_bits(bits: np.ndarray, width: int) -> np.ndarray:
    """Unpack int32 ``[..., H, Wwords]`` (see :func:`pack_bits`) to bool ``[..., H, width]``."""
    bits = np.ascontiguousarray(np.asarray(bits, dtype=np.int32))
    if width <= 0 or width > bits.shape[-1] * 32:
        raise ValueError(f"width {width} does not fit {bits.shape[-1]} words")
    as_bytes = bits.astype("<i4").view(np.uint8)
    return np.unpackbits(as_bytes, axis=-1, bitorder="little")[..., :width].astype(bool)


def bits_to_rle(bits: np.ndarray, width: int) -> list[dict[str, Any]]:
    """COCO-style uncompressed RLE of each object: ``{"size": [H, W], "counts": [...]}``.

    Args:
        bits: ``[N, H, Wwords]`` int32. Counts run over the column-major (Fortran) flattening and start
        with the number of zeros, as in pycocotools.
    """
    masks = unpack_bits(bits, width)
    out = []
    for m in masks:
        flat = m.T.ravel().astype(np.int8)
        change = np.flatnonzero(np.diff(flat)) + 1
        bounds = np.concatenate([[0], change, [flat.size]])
        counts = np.diff(bounds).tolist()
        if flat.size and flat[0]:
            counts = [0] + counts
        out.append({"size": [int(m.shape[0]), int(m.shape[1])], "counts": counts})
    return out


def rle_to_mask(rle: dict[str, Any]) -> np.ndarray:
    """Inverse of :func:`bits_to_rle` for one object: returns bool ``[H, W]``."""
    H, W = rle["size"]
    counts = np.asarray(rle["counts"], dtype=np.int64)
    if counts.sum() != H * W:
        raise ValueError(f"RLE counts sum {counts.sum()} != H*W = {H * W}")
    vals = (np.arange(counts.size) % 2).astype(bool)
    return np.repeat(vals, counts).reshape(W, H).T.copy()
