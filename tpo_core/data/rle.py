"""COCO run-length encoding (RLE) of binary masks, our own implementation (no pycocotools).

A COCO RLE is ``{"size": [H, W], "counts": ...}``. Runs alternate 0s and 1s over the mask flattened in
**column-major** (Fortran) order and always start with a run of 0s (possibly of length 0).
``counts`` is either a list of ints (uncompressed RLE) or the compressed string form that COCO,
LVIS, SA-V and MeViS store in JSON: each count (after the 3rd, as a delta to the count two before)
is written as 5-bit groups, low bits first, each group + 48 as one ASCII character, bit 0x20 meaning
"more groups follow" and bit 0x10 of the last group carrying the sign.

Public API: ``encode(mask) -> dict``, ``decode(rle) -> np.ndarray [H, W] bool``,
``counts_to_string``/``string_to_counts``, ``area(rle)``, ``to_bbox(rle)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def mask_to_counts(mask: np.ndarray) -> list[int]:
    """Binary mask [H, W] -> run lengths over the column-major flattening, starting with a 0-run."""
    if mask.ndim != 2:
        raise ValueError(f"rle: mask must be 2-D [H, W], got shape {tuple(mask.shape)}")
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    if flat.size == 0:
        return [0]
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], change, [flat.size]))
    counts = np.diff(bounds).tolist()
    if flat[0]:
        counts.insert(0, 0)
    return counts


def counts_to_string(counts: Sequence[int]) -> str:
    """Uncompressed counts -> COCO's compressed string (the LEB128-like 5-bit scheme of maskApi.c)."""
    out = []
    for i, count in enumerate(counts):
        x = int(count) - (int(counts[i - 2]) if i > 2 else 0)
        more = True
        while more:
            c = x & 0x1F
            x >>= 5  # arithmetic shift, like C's long
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def string_to_counts(s: str) -> list[int]:
    """COCO compressed string -> list of run lengths (inverse of ``counts_to_string``)."""
    counts: list[int] = []
    p = 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            if p >= len(s):
                raise ValueError(f"rle: compressed counts string ends inside a value at char {p}: {s[:40]!r}...")
            c = ord(s[p]) - 48
            if not 0 <= c < 64:
                raise ValueError(f"rle: invalid character {s[p]!r} at {p} in compressed counts")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def encode(mask: np.ndarray) -> dict:
    """Binary mask [H, W] (bool or 0/1 or 0/255) -> ``{"size": [H, W], "counts": str}`` (compressed)."""
    mask = np.asarray(mask)
    counts = mask_to_counts(mask)  # validates the shape
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts_to_string(counts)}


def _counts(rle: dict) -> tuple[int, int, list[int]]:
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise ValueError(f"rle: expected a dict with 'size' [H, W] and 'counts', got {str(rle)[:80]}")
    size = rle["size"]
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(v, int) and v >= 0 for v in size)):
        raise ValueError(f"rle: 'size' must be [H, W] non-negative ints, got {size!r}")
    counts = rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    counts = string_to_counts(counts) if isinstance(counts, str) else [int(c) for c in counts]
    h, w = size
    if any(c < 0 for c in counts) or sum(counts) != h * w:
        raise ValueError(f"rle: counts sum to {sum(counts)} (negative runs: {any(c < 0 for c in counts)}) but "
                         f"size {h}x{w} needs {h * w}; the RLE is corrupt or its 'size' is wrong")
    return h, w, counts


def decode(rle: dict) -> np.ndarray:
    """COCO RLE (compressed string or list counts) -> bool mask [H, W]."""
    h, w, counts = _counts(rle)
    values = np.zeros(len(counts), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, counts)
    return flat.reshape((w, h)).T.copy() if h * w else np.zeros((h, w), dtype=bool)


def area(rle: dict) -> int:
    """Number of foreground pixels."""
    return int(sum(_counts(rle)[2][1::2]))


def to_bbox(rle: dict) -> list[int] | None:
    """Pixel bbox ``[x0, y0, x1, y1]`` with exclusive x1/y1 (so width = x1 - x0), or None if empty."""
    return mask_bbox(decode(rle))


def mask_bbox(mask: np.ndarray) -> list[int] | None:
    """Bool mask [H, W] -> ``[x0, y0, x1, y1]`` pixel edges (x1/y1 exclusive), or None for an empty mask."""
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    if ys.size == 0:
        return None
    return [int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1]
