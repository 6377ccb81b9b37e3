"""The result types of a TPO request, shared by the reference (``TPOModel.generate``) and the runtime.

Units: seconds and pixels of the source video. Masks are kept packed (:mod:`runtime.mask_bits` layout:
``[T, H, ceil(W/32)]`` int32, bit j of word k = pixel x = 32k + j) and unpacked only on demand.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from runtime.mask_bits import pack_bits, unpack_bits


@dataclass
class Span:
    start: float  # seconds
    end: float  # seconds
    score: float  # foreground probability

    def to_dict(self) -> dict:
        return {"start": self.start, "end": self.end, "score": round(float(self.score), 6)}


@dataclass
class TemporalResult:
    """Spans sorted by score (best first); per-frame saliency curve ``saliency [L]`` at ``saliency_times [L]`` s."""

    spans: list[Span]
    saliency: np.ndarray
    saliency_times: np.ndarray

    @property
    def best(self) -> Span | None:
        return self.spans[0] if self.spans else None

    def to_dict(self) -> dict:
        return {"spans": [s.to_dict() for s in self.spans], "saliency": np.round(self.saliency, 6).tolist(),
                "saliency_times": np.round(self.saliency_times, 4).tolist()}


@dataclass
class RegionResult:
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels of the source video (clamped, ordered)
    box_normalized: tuple[float, float, float, float]  # the head's raw normalized xyxy

    def to_dict(self) -> dict:
        return {"box": [round(float(v), 3) for v in self.box],
                "box_normalized": [round(float(v), 6) for v in self.box_normalized]}


@dataclass
class MaskResult:
    """Per-frame masks of one object, bitmask-backed.

    bits: int32 ``[T, H, ceil(W/32)]`` packed masks at ``(height, width)``; timestamps ``[T]`` s; object_scores
    ``[T]`` logits (> 0: present); boxes: per frame inclusive ``(x0, y0, x1, y1)`` or None; areas ``[T]`` int64.
    """

    bits: np.ndarray
    height: int
    width: int
    timestamps: np.ndarray
    object_scores: np.ndarray
    boxes: list[tuple[int, int, int, int] | None]
    areas: np.ndarray

    @classmethod
    def from_masks(cls, masks: np.ndarray, timestamps, object_scores) -> MaskResult:
        """bool ``[T, H, W]`` masks (e.g. the reference's upsampled logits > 0) -> a packed MaskResult."""
        m = np.asarray(masks, bool)
        boxes = [mask_box(f) for f in m]
        return cls(bits=pack_bits(m), height=int(m.shape[1]), width=int(m.shape[2]),
                   timestamps=np.asarray(timestamps, np.float32), object_scores=np.asarray(object_scores, np.float32),
                   boxes=boxes, areas=m.reshape(m.shape[0], -1).sum(1).astype(np.int64))

    @property
    def num_frames(self) -> int:
        return int(self.bits.shape[0])

    @property
    def present(self) -> np.ndarray:
        """bool ``[T]``: the mask head reports the object on frame t (object score > 0); False = "not found"."""
        return np.asarray(self.object_scores, np.float32).reshape(-1) > 0

    @property
    def masks(self) -> np.ndarray:
        """bool ``[T, H, W]`` (unpacked on each access)."""
        return unpack_bits(self.bits, self.width)

    def mask(self, t: int) -> np.ndarray:
        """bool ``[H, W]`` of frame t."""
        return unpack_bits(self.bits[t], self.width)

    def to_dict(self) -> dict:
        return {"num_frames": self.num_frames, "height": int(self.height), "width": int(self.width),
                "timestamps": np.round(self.timestamps, 4).tolist(),
                "object_scores": np.round(self.object_scores, 4).tolist(),
                "present": [bool(p) for p in self.present],
                "areas": [int(a) for a in self.areas],
                "boxes": [list(b) if b is not None else None for b in self.boxes]}


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Inclusive pixel box (x0, y0, x1, y1) of a bool mask ``[H, W]``; None when empty."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def boxes_from_decoded(boxes: np.ndarray) -> list[tuple[int, int, int, int] | None]:
    """``decode_masks`` boxes int32 ``[N, 4]`` (-1 when empty) -> list of tuples or None."""
    return [None if int(b[0]) < 0 else tuple(int(v) for v in b) for b in np.asarray(boxes)]


@dataclass
class TPOResult:
    """One ``Pipeline.ask``: decoded text, generated ids, each triggered head's output, timings and notes."""

    text: str
    token_ids: list[int]
    tasks: list[str] = field(default_factory=list)  # heads run, in order
    region: RegionResult | None = None
    temporal: TemporalResult | None = None
    mask: MaskResult | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # e.g. "video downscaled from 15360x8640"
    video: dict = field(default_factory=dict)  # {"width", "height", "duration", "fps", "timestamps"}
    mask_prompt: Any = None  # mask_tracker.MaskPrompt when ask(track_mask=False) routed to the mask head

    def to_dict(self) -> dict:
        out: dict = {"text": self.text, "token_ids": list(self.token_ids), "tasks": list(self.tasks)}
        for name in ("region", "temporal", "mask"):
            value = getattr(self, name)
            out[name] = value.to_dict() if value is not None else None
        if self.timings_ms:
            out["timings_ms"] = {k: round(float(v), 3) for k, v in self.timings_ms.items()}
        if self.notes:
            out["notes"] = list(self.notes)
        return out


@dataclass
class FrameResult:
    """One frame of ``Pipeline.stream``.

    index: frame number in the source (counting bad frames); timestamp: seconds (the source's presentation time or
    index / fps); mask: the tracked object's mask on this frame (bool-packed ``[1, H, ceil(W/32)]`` inside a
    MaskResult of one frame) when tracking; box: its inclusive pixel box (None when the object is not found, see
    ``present``); answer: an LLM answer when it was produced on this frame -- or, with background re-asks, when it
    completed before this frame (``None`` otherwise), asked on the window ending at frame ``asked_at``;
    answer_error: why a background re-ask failed; error: a message when the frame was dropped (then everything else
    is empty); latency_ms: wall time spent on this frame (preprocess + tracking + any LLM re-ask done on it; a
    background re-ask is not done on a frame).
    """

    index: int
    timestamp: float
    latency_ms: float = 0.0
    mask: MaskResult | None = None
    box: tuple[int, int, int, int] | None = None
    object_score: float | None = None
    answer: TPOResult | None = None
    error: str | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    answer_error: str | None = None
    asked_at: int | None = None  # index of the frame whose window ``answer`` is about (background: an earlier one)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def present(self) -> bool | None:
        """Tracking: is the object on this frame (object score > 0)? None when not tracking."""
        return None if self.object_score is None else bool(self.object_score > 0)

    def to_dict(self) -> dict:
        out: dict = {"index": self.index, "timestamp": round(float(self.timestamp), 4),
                     "latency_ms": round(float(self.latency_ms), 3)}
        if self.error is not None:
            out["error"] = self.error
            return out
        if self.mask is not None:
            out["box"] = list(self.box) if self.box is not None else None
            out["area"] = int(self.mask.areas[0])
            out["object_score"] = round(float(self.object_score), 4)
            out["present"] = self.present
        if self.answer is not None:
            out["answer"] = self.answer.to_dict()
            out["asked_at"] = self.asked_at
        if self.answer_error is not None:
            out["answer_error"] = self.answer_error
        if self.timings_ms:
            out["timings_ms"] = {k: round(float(v), 3) for k, v in self.timings_ms.items()}
        return out
