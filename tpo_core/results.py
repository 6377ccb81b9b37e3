"""Typed results of a TPO query (reference inference). Units: seconds and pixels of the source video."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Span:
    start: float  # seconds
    end: float  # seconds
    score: float  # foreground probability

    def to_dict(self) -> dict:
        return {"start": self.start, "end": self.end, "score": round(float(self.score), 6)}


@dataclass
class TemporalResult:
    """Spans sorted by score (best first) and the per-frame saliency curve at ``saliency_times``."""

    spans: list[Span]
    saliency: np.ndarray  # [L] float32
    saliency_times: np.ndarray  # [L] seconds

    def to_dict(self) -> dict:
        return {"spans": [s.to_dict() for s in self.spans], "saliency": np.round(self.saliency, 6).tolist(),
                "saliency_times": np.round(self.saliency_times, 4).tolist()}


@dataclass
class RegionResult:
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels of the source video
    box_normalized: tuple[float, float, float, float]  # the head's raw normalized xyxy

    def to_dict(self) -> dict:
        return {"box": [round(float(v), 3) for v in self.box],
                "box_normalized": [round(float(v), 6) for v in self.box_normalized]}


@dataclass
class MaskResult:
    """Per-frame masks at the video's own resolution: ``masks`` bool [T, H, W]."""

    masks: np.ndarray
    timestamps: np.ndarray  # [T] seconds of each masked frame
    object_scores: np.ndarray  # [T] object-score logits (> 0: present)
    boxes: list[tuple[int, int, int, int] | None]  # per-frame inclusive pixel box of the mask, None if empty

    def to_dict(self) -> dict:
        return {"num_frames": int(self.masks.shape[0]), "height": int(self.masks.shape[1]),
                "width": int(self.masks.shape[2]), "timestamps": np.round(self.timestamps, 4).tolist(),
                "object_scores": np.round(self.object_scores, 4).tolist(),
                "areas": self.masks.reshape(self.masks.shape[0], -1).sum(1).tolist(),
                "boxes": [list(b) if b is not None else None for b in self.boxes]}


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Inclusive pixel box (x0, y0, x1, y1) of a bool mask [H, W]; None when empty."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


@dataclass
class TPOResult:
    """What one query returns: the decoded text, the generated ids, and each triggered head's output."""

    text: str
    token_ids: list[int]
    tasks: list[str] = field(default_factory=list)  # heads run, in order
    region: RegionResult | None = None
    temporal: TemporalResult | None = None
    mask: MaskResult | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        out: dict = {"text": self.text, "token_ids": self.token_ids, "tasks": self.tasks}
        for name in ("region", "temporal", "mask"):
            value = getattr(self, name)
            out[name] = value.to_dict() if value is not None else None
        if self.timings_ms:
            out["timings_ms"] = {k: round(v, 3) for k, v in self.timings_ms.items()}
        return out
