"""Evaluation metrics (numpy only, no torch): boxes, temporal windows, masks (J&F), QA, routing.

Definitions (also in docs/training.md):
- ``box_iou``: IoU of two ``xyxy`` boxes (pixels or normalized, the same unit for both); 0 for empty union.
- ``window_iou``: 1D IoU of two ``(start, end)`` windows in seconds.
- Temporal R1@t: the top-1 predicted window's IoU with the best-matching ground-truth window is >= t.
- ``mask_iou`` (J): region similarity |P & G| / |P | G| for bool masks [H, W]; two empty masks give 1.
- ``boundary_f`` (F): boundary F-measure. The boundary of a mask is its pixels with a 4-neighbour outside
  it. A predicted boundary pixel is a hit when a ground-truth boundary pixel lies within ``tol`` pixels
  (Chebyshev distance, a square dilation); precision = hits / |boundary(P)|, recall likewise from G's side;
  F = 2PR / (P + R). ``tol`` defaults to ``boundary_tolerance(H, W)`` = max(1, round(0.008 * diagonal)), the
  DAVIS rule. Both boundaries empty -> 1; exactly one empty -> 0.
- J&F of a video = (mean J over frames + mean F over frames) / 2.
- ``normalize_answer``: lower case, punctuation and articles stripped, whitespace collapsed (QA exact match).
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

import numpy as np


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of ``xyxy`` boxes a [4] and b [4]; corners are ordered first (x1 <= x2, y1 <= y2)."""
    ax0, ax1 = sorted((float(a[0]), float(a[2])))
    ay0, ay1 = sorted((float(a[1]), float(a[3])))
    bx0, bx1 = sorted((float(b[0]), float(b[2])))
    by0, by1 = sorted((float(b[1]), float(b[3])))
    iw = max(0.0, min(ax1, bx1) - max(ax0, bx0))
    ih = max(0.0, min(ay1, by1) - max(ay0, by0))
    inter = iw * ih
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    return inter / union if union > 0 else 0.0


def window_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of 1D windows a = (start, end) and b = (start, end) (seconds)."""
    a0, a1 = sorted((float(a[0]), float(a[1])))
    b0, b1 = sorted((float(b[0]), float(b[1])))
    inter = max(0.0, min(a1, b1) - max(a0, b0))
    union = (a1 - a0) + (b1 - b0) - inter
    return inter / union if union > 0 else 0.0


def best_window_iou(pred: Sequence[float], gts: Sequence[Sequence[float]]) -> float:
    """IoU of the predicted window with the ground-truth window it overlaps most (0 when no GT)."""
    return max((window_iou(pred, g) for g in gts), default=0.0)


def mask_iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """J: IoU of bool masks [H, W]; 1.0 when both are empty."""
    pred, gt = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    if pred.shape != gt.shape:
        raise ValueError(f"mask_iou: prediction {pred.shape} and ground truth {gt.shape} differ in shape")
    union = np.logical_or(pred, gt).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(pred, gt).sum() / union)


def mask_boundary(mask: np.ndarray) -> np.ndarray:
    """Bool boundary [H, W]: mask pixels with at least one 4-neighbour outside the mask (image edge = outside)."""
    m = np.asarray(mask, dtype=bool)
    padded = np.pad(m, 1, constant_values=False)
    interior = (padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:])
    return m & ~interior


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Square (Chebyshev) dilation of a bool mask by ``radius`` pixels."""
    if radius <= 0:
        return mask.copy()
    h, w = mask.shape
    padded = np.pad(mask, radius, constant_values=False)
    out = np.zeros_like(mask)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            out |= padded[dy:dy + h, dx:dx + w]
    return out


def boundary_tolerance(height: int, width: int, ratio: float = 0.008) -> int:
    """DAVIS boundary tolerance in pixels: max(1, round(ratio * image diagonal))."""
    return max(1, int(round(ratio * float(np.hypot(height, width)))))


def boundary_f(pred: np.ndarray, gt: np.ndarray, tol: int | None = None) -> float:
    """F: boundary F-measure of bool masks [H, W] with a ``tol``-pixel tolerance (see module docstring)."""
    pred, gt = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    if pred.shape != gt.shape:
        raise ValueError(f"boundary_f: prediction {pred.shape} and ground truth {gt.shape} differ in shape")
    tol = boundary_tolerance(*gt.shape) if tol is None else int(tol)
    bp, bg = mask_boundary(pred), mask_boundary(gt)
    n_p, n_g = int(bp.sum()), int(bg.sum())
    if n_p == 0 and n_g == 0:
        return 1.0
    if n_p == 0 or n_g == 0:
        return 0.0
    precision = float((bp & _dilate(bg, tol)).sum()) / n_p
    recall = float((bg & _dilate(bp, tol)).sum()) / n_g
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def video_j_and_f(preds: np.ndarray, gts: np.ndarray, tol: int | None = None) -> dict[str, float]:
    """Per-video J, F and J&F: ``preds``/``gts`` bool [T, H, W] (the same frames)."""
    preds, gts = np.asarray(preds, dtype=bool), np.asarray(gts, dtype=bool)
    if preds.shape != gts.shape or preds.ndim != 3:
        raise ValueError(f"video_j_and_f: expects two bool [T, H, W] stacks of one shape, got {preds.shape} "
                         f"and {gts.shape}")
    j = float(np.mean([mask_iou(p, g) for p, g in zip(preds, gts)]))
    f = float(np.mean([boundary_f(p, g, tol) for p, g in zip(preds, gts)]))
    return {"J": j, "F": f, "JF": (j + f) / 2}


_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """Lower case, drop punctuation and articles, collapse whitespace."""
    text = text.lower().translate(str.maketrans("", "", string.punctuation))
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(pred: str, gt: str) -> bool:
    return normalize_answer(pred) == normalize_answer(gt)


class MetricAccumulator:
    """Collects per-sample values and summarizes them (means, rates at thresholds, counts)."""

    def __init__(self) -> None:
        self.values: dict[str, list[float]] = {}

    def add(self, name: str, value: float) -> None:
        self.values.setdefault(name, []).append(float(value))

    def mean(self, name: str) -> float | None:
        vals = self.values.get(name)
        return float(np.mean(vals)) if vals else None

    def rate(self, name: str, threshold: float) -> float | None:
        vals = self.values.get(name)
        return float(np.mean(np.asarray(vals) >= threshold)) if vals else None

    def count(self, name: str) -> int:
        return len(self.values.get(name, []))


def summarize(acc: MetricAccumulator) -> dict:
    """The report of ``tpo eval``: routing (over the positive tasks), region, temporal, mask, QA and negative
    metrics, each with its trivial baseline where ``evaluate`` scored one, plus sample counts."""
    def rnd(v):
        return None if v is None else round(v, 4)

    def j_and_f(j, f):
        return rnd(None if j is None or f is None else (j + f) / 2)

    asked = sorted(k[len("negative_found_"):] for k in acc.values if k.startswith("negative_found_"))
    return {
        "routing_accuracy": rnd(acc.mean("routing")),
        "region": {"acc@0.5": rnd(acc.rate("region_iou", 0.5)), "mean_iou": rnd(acc.mean("region_iou")),
                   "count": acc.count("region_iou"),
                   "baseline_mean_box": {"acc@0.5": rnd(acc.rate("region_iou_mean_box", 0.5)),
                                         "mean_iou": rnd(acc.mean("region_iou_mean_box"))}},
        "temporal": {"r1@0.5": rnd(acc.rate("temporal_iou", 0.5)), "r1@0.7": rnd(acc.rate("temporal_iou", 0.7)),
                     "miou": rnd(acc.mean("temporal_iou")), "count": acc.count("temporal_iou"),
                     "baseline_whole_video": {"r1@0.5": rnd(acc.rate("temporal_iou_whole_video", 0.5)),
                                              "miou": rnd(acc.mean("temporal_iou_whole_video"))}},
        "mask": {"mean_iou": rnd(acc.mean("mask_J")), "J": rnd(acc.mean("mask_J")), "F": rnd(acc.mean("mask_F")),
                 "J&F": j_and_f(acc.mean("mask_J"), acc.mean("mask_F")), "count": acc.count("mask_J"),
                 "baseline_mean_box": {"J": rnd(acc.mean("mask_J_mean_box"))}},
        "qa": {"accuracy": rnd(acc.mean("qa_em")), "count": acc.count("qa_em")},
        "negative": {"false_found": rnd(acc.mean("negative_found")), "count": acc.count("negative_found"),
                     "false_found_by_asked": {k: rnd(acc.mean(f"negative_found_{k}")) for k in asked},
                     "answer_em": rnd(acc.mean("negative_answer_em"))},
        "routing_by_task": {k[len("routing_"):]: rnd(acc.mean(k)) for k in sorted(acc.values)
                            if k.startswith("routing_")},
        "num_samples": acc.count("routing") + acc.count("negative_found"),
    }
