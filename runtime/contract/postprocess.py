"""Head outputs -> user units, as released (numpy; the reference and the runtime both call these).

- :func:`box_to_pixels`: the region head's normalized ``xyxy [4]`` -> pixel ``(x0, y0, x1, y1)``.
- :func:`spans_to_seconds`: the temporal head's ``pred_logits [Q, 2]`` and ``pred_spans [Q, 2]`` -> windows in
  seconds with their foreground score, best first.
"""

from __future__ import annotations

import numpy as np

FOREGROUND = 0  # index of the foreground class in the temporal head's pred_logits


def box_to_pixels(norm, width: float, height: float) -> tuple[float, float, float, float]:
    """Normalized xyxy ``[4]`` (no sigmoid: may leave [0, 1] or swap corners) -> pixel xyxy: x (W, H) in float32,
    corners ordered, clamped to ``[0, W] x [0, H]``."""
    if width <= 0 or height <= 0:
        raise ValueError(f"box_to_pixels: width and height must be positive, got {width}x{height}")
    n = np.asarray(norm, np.float32).reshape(-1)
    if n.shape != (4,):
        raise ValueError(f"box_to_pixels expects a box of 4 values, got shape {np.shape(norm)}")
    xs = np.sort(n[0::2] * np.float32(width)).clip(0.0, float(width))
    ys = np.sort(n[1::2] * np.float32(height)).clip(0.0, float(height))
    return float(xs[0]), float(ys[0]), float(xs[1]), float(ys[1])


def spans_to_seconds(logits, spans, duration: float, round_to: float = 1.0) -> list[tuple[float, float, float]]:
    """``logits [Q, 2]`` (index 0 = foreground), ``spans [Q, 2]`` (cx, w) / duration -> ``(start, end, score)``.

    Score = softmax foreground probability (float64); ``(cx -+ w/2) x duration`` clamped to ``[0, duration]``,
    rounded to a multiple of ``round_to`` s (half to even; ``<= 0``: no rounding) and clamped again (rounding never
    leaves the video); stable sort by score, best first.
    """
    lg, sp = np.asarray(logits, np.float64), np.asarray(spans, np.float64)
    if lg.ndim != 2 or lg.shape[-1] != 2 or sp.shape != lg.shape:
        raise ValueError(f"spans_to_seconds expects logits and spans [Q, 2], got {lg.shape} and {sp.shape}")
    d = float(duration)
    if not d > 0:
        raise ValueError(f"spans_to_seconds: duration must be positive, got {duration!r}")
    e = np.exp(lg - lg.max(-1, keepdims=True))
    scores = (e / e.sum(-1, keepdims=True))[:, FOREGROUND]
    start = np.minimum(np.maximum((sp[:, 0] - sp[:, 1] / 2) * d, 0.0), d)
    end = np.minimum(np.maximum((sp[:, 0] + sp[:, 1] / 2) * d, 0.0), d)
    if round_to > 0:
        start = np.minimum(np.maximum(np.round(start / round_to) * round_to, 0.0), d)
        end = np.minimum(np.maximum(np.round(end / round_to) * round_to, 0.0), d)
    order = np.argsort(-scores, kind="stable")
    return [(float(start[q]), float(end[q]), float(scores[q])) for q in order]


def parse_box(text: str) -> tuple[float, float, float, float]:
    """``"x0,y0,x1,y1"`` (the CLI's ``--box``, pixels of the video) -> four floats; ValueError naming the format."""
    parts = [p.strip() for p in str(text).replace(" ", ",").split(",") if p.strip()]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 4:
        raise ValueError(f"--box takes four numbers x0,y0,x1,y1 in pixels of the video (e.g. --box 10,20,200,180), "
                         f"got {text!r}")
    return values  # type: ignore[return-value]


def boxes_to_normalized(boxes, width: float, height: float, max_boxes: int | None = None) -> np.ndarray:
    """Box prompts in pixels of the video -> normalized xyxy float32 ``[K, 4]`` (what ``loc_encoder`` takes).

    ``boxes``: a list of ``(x0, y0, x1, y1)`` in pixels (the units of ``RegionResult.box``), each with
    ``0 <= x0 < x1 <= width`` and ``0 <= y0 < y1 <= height``; ValueError naming the box and the rule otherwise.
    """
    if isinstance(boxes, (str, bytes)) or not hasattr(boxes, "__len__"):
        raise ValueError(f"boxes must be a list of (x0, y0, x1, y1) boxes in pixels, got {type(boxes).__name__}")
    if max_boxes is not None and len(boxes) > max_boxes:
        raise ValueError(f"{len(boxes)} boxes given; this export takes at most {max_boxes} box prompts")
    out = np.zeros((len(boxes), 4), np.float32)
    for k, box in enumerate(boxes):
        try:
            b = np.asarray(box, np.float64).reshape(-1)
        except (TypeError, ValueError):
            b = np.zeros(0)
        if b.shape != (4,):
            raise ValueError(f"box {k}: a box is four numbers (x0, y0, x1, y1) in pixels, got {box!r}")
        if not np.isfinite(b).all():
            raise ValueError(f"box {k}: {box!r} must hold finite numbers")
        x0, y0, x1, y1 = b
        if not (x0 < x1 and y0 < y1):
            raise ValueError(f"box {k}: {tuple(b.tolist())} needs x0 < x1 and y0 < y1 (top-left, then bottom-right)")
        if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
            raise ValueError(f"box {k}: {tuple(b.tolist())} lies outside the {int(width)}x{int(height)} video; give "
                             "pixels inside the frame")
        out[k] = (x0 / width, y0 / height, x1 / width, y1 / height)
    return out
