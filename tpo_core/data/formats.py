"""Loaders for the annotation formats TPO trains on (synthetic or real), with validation.

- ``load_qvhighlights(path)``: QVHighlights-style jsonl (temporal grounding). Real QVHighlights files load
  as-is; the test split's missing labels load as empty lists.
- ``load_region(path)``: RefCOCO-style region grounding JSON list (normalized xyxy ``box``, or COCO pixel
  ``bbox`` [x, y, w, h] with ``width``/``height``).
- ``load_segmentation(path, root)``: referring segmentation / tracking: our JSON list with per-frame PNG
  masks or COCO RLE, or a MeViS ``meta_expressions.json`` with ``mask_dict.json`` beside it or in ``root``.
- ``load_conversations(path)``: LLaVA-style conversation JSON list.

Every error names the file, the record (index and id) and the field. Record formats: docs/data.md.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tpo_core.data import rle as rle_mod

FORMAT_VERSIONS = {"temporal": "qvhighlights-jsonl/1", "region": "tpo-region/1",
                   "segmentation": "tpo-segmentation/1", "conversations": "llava/1"}


class AnnotationError(ValueError):
    """An annotation file or record is malformed; the message names file, record and field."""


def _fail(path: Path, where: str, msg: str) -> AnnotationError:
    return AnnotationError(f"{path}: {where}: {msg}")


def _where(i: int, rec: Any, key: str = "id") -> str:
    rid = rec.get(key) if isinstance(rec, dict) else None
    return f"record {i}" + (f" ({key}={rid!r})" if rid is not None else "")


def _read_json(path: str | Path) -> tuple[Path, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file {path} does not exist; check the path "
                                "(`tpo data synth --out DIR` writes temporal.jsonl, region.json, "
                                "segmentation.json and conversations.json into DIR)")
    try:
        return path, json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise AnnotationError(f"{path}: not valid JSON ({err}); fix or regenerate the file") from err


def _need(path: Path, where: str, rec: dict, key: str, types: type | tuple) -> Any:
    if key not in rec:
        raise _fail(path, where, f"missing field {key!r} (fields present: {sorted(rec)})")
    value = rec[key]
    allowed = types if isinstance(types, tuple) else (types,)
    if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
        names = "/".join(t.__name__ for t in allowed)
        raise _fail(path, where, f"field {key!r} must be {names}, got {type(value).__name__} {value!r:.60}")
    return value


def _box(path: Path, where: str, key: str, value: Any) -> tuple[float, float, float, float]:
    ok = isinstance(value, (list, tuple)) and len(value) == 4 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    if not ok:
        raise _fail(path, where, f"field {key!r} must be 4 numbers [x1, y1, x2, y2], got {value!r:.80}")
    x1, y1, x2, y2 = (float(v) for v in value)
    if not (-1e-6 <= x1 < x2 <= 1 + 1e-6 and -1e-6 <= y1 < y2 <= 1 + 1e-6):
        raise _fail(path, where, f"field {key!r}={value} is not a normalized xyxy box (need 0 <= x1 < x2 <= 1 "
                                 "and 0 <= y1 < y2 <= 1); divide pixel boxes by the image width/height")
    return x1, y1, x2, y2


# ----------------------------------------------------------------------------------------------- temporal
@dataclass
class TemporalRecord:
    """One QVHighlights-style query. Windows in seconds; ``saliency_scores[j]`` belongs to clip
    ``relevant_clip_ids[j]`` (clip ``c`` covers ``[c * clip_len, (c + 1) * clip_len)`` seconds)."""

    qid: int | str
    query: str
    duration: float
    vid: str
    relevant_windows: list[list[float]] = field(default_factory=list)
    relevant_clip_ids: list[int] = field(default_factory=list)
    saliency_scores: list[list[int]] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    def saliency_curve(self, num_clips: int) -> np.ndarray:
        """Mean saliency per clip, float32 [num_clips], 0 for clips not listed."""
        out = np.zeros(num_clips, dtype=np.float32)
        for cid, scores in zip(self.relevant_clip_ids, self.saliency_scores):
            if 0 <= cid < num_clips:
                out[cid] = float(np.mean(scores))
        return out


_QVH_KEYS = ("qid", "query", "duration", "vid", "relevant_windows", "relevant_clip_ids", "saliency_scores")


def _temporal_record(path: Path, where: str, rec: Any) -> TemporalRecord:
    if not isinstance(rec, dict):
        raise _fail(path, where, f"must be a JSON object, got {type(rec).__name__}")
    qid = _need(path, where, rec, "qid", (int, str))
    query = _need(path, where, rec, "query", str)
    duration = float(_need(path, where, rec, "duration", (int, float)))
    vid = str(_need(path, where, rec, "vid", (str, int)))
    if duration <= 0:
        raise _fail(path, where, f"field 'duration' must be > 0 seconds, got {duration}")
    windows = rec.get("relevant_windows") or []
    for w in windows:
        if not (isinstance(w, (list, tuple)) and len(w) == 2 and 0 <= w[0] < w[1] <= duration + 1e-3):
            raise _fail(path, where, f"field 'relevant_windows' has {w!r}; each window must be [start, end] "
                                     f"seconds with 0 <= start < end <= duration ({duration})")
    clips = rec.get("relevant_clip_ids") or []
    scores = rec.get("saliency_scores") or []
    if len(scores) != len(clips):
        raise _fail(path, where, f"'saliency_scores' has {len(scores)} entries but 'relevant_clip_ids' has "
                                 f"{len(clips)}; there must be one score triple per relevant clip")
    for s in scores:
        if not (isinstance(s, (list, tuple)) and s and all(isinstance(v, int) and 0 <= v <= 4 for v in s)):
            raise _fail(path, where, f"field 'saliency_scores' has {s!r}; each entry must list ints in [0, 4] "
                                     "(QVHighlights: 3 annotators)")
    return TemporalRecord(qid=qid, query=query, duration=duration, vid=vid,
                          relevant_windows=[[float(a), float(b)] for a, b in windows],
                          relevant_clip_ids=[int(c) for c in clips], saliency_scores=[list(s) for s in scores],
                          extra={k: v for k, v in rec.items() if k not in _QVH_KEYS})


def load_qvhighlights(path: str | Path) -> list[TemporalRecord]:
    """QVHighlights-style jsonl -> records. Blank lines are skipped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"temporal annotation file {path} does not exist; check the path")
    out = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            raise AnnotationError(f"{path}: line {lineno}: not valid JSON ({err}); each line must be one "
                                  "JSON object") from err
        qid = f" (qid={rec['qid']!r})" if isinstance(rec, dict) and "qid" in rec else ""
        out.append(_temporal_record(path, f"line {lineno}{qid}", rec))
    return out


# ------------------------------------------------------------------------------------------------- region
@dataclass
class RegionRecord:
    """One referring expression with its box (normalized xyxy) in frame ``frame_index`` at ``time`` s."""

    id: str
    video: str
    query: str
    box: tuple[float, float, float, float]
    width: int
    height: int
    frame_index: int | None = None
    time: float | None = None
    extra: dict = field(default_factory=dict)


_REGION_KEYS = ("id", "video", "image", "query", "box", "bbox", "width", "height", "frame_index", "time")


def _region_record(path: Path, i: int, rec: Any) -> RegionRecord:
    where = _where(i, rec)
    if not isinstance(rec, dict):
        raise _fail(path, where, f"must be a JSON object, got {type(rec).__name__}")
    media_key = "video" if "video" in rec else "image"
    media = str(_need(path, where, rec, media_key, str))
    query = _need(path, where, rec, "query", str)
    width = _need(path, where, rec, "width", int)
    height = _need(path, where, rec, "height", int)
    if "box" in rec:
        box = _box(path, where, "box", rec["box"])
    elif "bbox" in rec:  # COCO pixels [x, y, w, h]
        b = rec["bbox"]
        if not (isinstance(b, (list, tuple)) and len(b) == 4):
            raise _fail(path, where, f"field 'bbox' must be COCO pixels [x, y, w, h], got {b!r:.80}")
        box = _box(path, where, "bbox", [b[0] / width, b[1] / height, (b[0] + b[2]) / width,
                                         (b[1] + b[3]) / height])
    else:
        raise _fail(path, where, "needs 'box' (normalized xyxy) or 'bbox' (COCO pixels [x, y, w, h])")
    frame = rec.get("frame_index")
    t = rec.get("time")
    return RegionRecord(id=str(rec.get("id", i)), video=media, query=query, box=box, width=width, height=height,
                        frame_index=None if frame is None else int(frame), time=None if t is None else float(t),
                        extra={k: v for k, v in rec.items() if k not in _REGION_KEYS})


def load_region(path: str | Path) -> list[RegionRecord]:
    path, data = _read_json(path)
    if not isinstance(data, list):
        raise AnnotationError(f"{path}: must hold a JSON list of region records, got {type(data).__name__}")
    return [_region_record(path, i, rec) for i, rec in enumerate(data)]


# ------------------------------------------------------------------------------------------- segmentation
@dataclass
class MaskRef:
    """Where one frame's mask lives: a PNG ``file`` (relative to the dataset root) and/or a COCO ``rle``."""

    file: str | None = None
    rle: dict | None = None


@dataclass
class SegmentationRecord:
    """A referred object through a video. ``masks`` maps frame index -> MaskRef for frames where it is
    visible; ``absent_frames`` lists frames where it is not. ``first_frame_box`` is normalized xyxy of the
    mask at ``first_frame_index`` (the first frame where it is visible)."""

    id: str
    video: str
    query: str
    object_id: int | str
    width: int
    height: int
    num_frames: int
    masks: dict[int, MaskRef]
    absent_frames: list[int]
    first_frame_index: int | None
    first_frame_box: tuple[float, float, float, float] | None
    root: Path
    extra: dict = field(default_factory=dict)

    def mask(self, frame: int) -> np.ndarray:
        """Bool mask [H, W] of this object at ``frame`` (all False when absent)."""
        ref = self.masks.get(frame)
        if ref is None:
            return np.zeros((self.height, self.width), dtype=bool)
        if ref.rle is not None:
            m = rle_mod.decode(ref.rle)
        else:
            m = read_mask_png(self.root / ref.file)
        if m.shape != (self.height, self.width):
            raise AnnotationError(f"segmentation record {self.id!r}: mask of frame {frame} is {m.shape}, "
                                  f"expected (height, width) = {(self.height, self.width)}")
        return m


def read_mask_png(path: str | Path) -> np.ndarray:
    """PNG mask (any non-zero pixel is foreground) -> bool [H, W].

    Read with Pillow, not OpenCV: once decord is imported, OpenCV's libpng binds decord's bundled zlib
    1.2.3 and fails on every PNG ("libpng error: bad parameters to zlib"; decord 0.6.0, opencv 4.x/5.x).
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            m = np.asarray(im)
    except (FileNotFoundError, UnidentifiedImageError, OSError) as err:
        raise AnnotationError(f"mask file {path} is missing or not a readable PNG ({err}); regenerate the masks "
                              "or fix the 'file' paths (they are relative to the dataset root)") from err
    return (m if m.ndim == 2 else m.max(axis=2)) > 0


_SEG_KEYS = ("id", "video", "query", "object_id", "width", "height", "num_frames", "masks", "absent_frames",
             "first_frame_index", "first_frame_box")


def _seg_record(path: Path, root: Path, i: int, rec: Any) -> SegmentationRecord:
    where = _where(i, rec)
    if not isinstance(rec, dict):
        raise _fail(path, where, f"must be a JSON object, got {type(rec).__name__}")
    vals = {k: _need(path, where, rec, k, t) for k, t in (("video", str), ("query", str), ("width", int),
                                                          ("height", int), ("num_frames", int),
                                                          ("masks", list))}
    masks: dict[int, MaskRef] = {}
    for j, m in enumerate(vals["masks"]):
        if not (isinstance(m, dict) and isinstance(m.get("frame"), int) and ("file" in m or "rle" in m)):
            raise _fail(path, where, f"field 'masks'[{j}] must be {{'frame': int, 'file': str}} or "
                                     f"{{'frame': int, 'rle': {{size, counts}}}}, got {str(m)[:80]}")
        if not 0 <= m["frame"] < vals["num_frames"]:
            raise _fail(path, where, f"field 'masks'[{j}].frame={m['frame']} is outside [0, num_frames)")
        masks[m["frame"]] = MaskRef(file=m.get("file"), rle=m.get("rle"))
    ffb = rec.get("first_frame_box")
    return SegmentationRecord(
        id=str(rec.get("id", i)), video=vals["video"], query=vals["query"], object_id=rec.get("object_id", 0),
        width=vals["width"], height=vals["height"], num_frames=vals["num_frames"], masks=masks,
        absent_frames=[int(f) for f in rec.get("absent_frames", [])],
        first_frame_index=rec.get("first_frame_index"),
        first_frame_box=None if ffb is None else _box(path, where, "first_frame_box", ffb), root=root,
        extra={k: v for k, v in rec.items() if k not in _SEG_KEYS})


def _mevis_records(path: Path, root: Path, meta: dict) -> list[SegmentationRecord]:
    """MeViS layout: meta_expressions.json + mask_dict.json (anno_id -> per-frame RLE or null)."""
    candidates = [path.parent / "mask_dict.json", root / "mask_dict.json"]
    mask_path = next((p for p in candidates if p.is_file()), None)
    if mask_path is None:
        raise FileNotFoundError(f"{path} is a MeViS meta_expressions file but no mask_dict.json was found in "
                                f"{[str(p) for p in candidates]}; put it beside the meta file or in root")
    mask_dict = json.loads(mask_path.read_text())
    out = []
    for vid, info in meta["videos"].items():
        frames = info.get("frames", [])
        for exp_id, exp in info.get("expressions", {}).items():
            where = f"video {vid!r} expression {exp_id!r}"
            annos = [mask_dict.get(str(a)) for a in exp.get("anno_id", [])]
            if not annos or any(a is None for a in annos):
                raise _fail(path, where, f"anno_id {exp.get('anno_id')} not all found in {mask_path}")
            masks, size = {}, None
            for f in range(len(frames)):
                rles = [a[f] for a in annos if f < len(a) and a[f] is not None]
                if rles:
                    size = rles[0]["size"]
                    union = np.any([rle_mod.decode(r) for r in rles], axis=0)
                    masks[f] = MaskRef(rle=rle_mod.encode(union) if len(rles) > 1 else rles[0])
            first = min(masks) if masks else None
            h, w = size if size else (0, 0)
            ffb = None
            if first is not None:
                x0, y0, x1, y1 = rle_mod.to_bbox(masks[first].rle)
                ffb = (x0 / w, y0 / h, x1 / w, y1 / h)
            out.append(SegmentationRecord(
                id=f"{vid}_{exp_id}", video=f"JPEGImages/{vid}", query=exp.get("exp", ""),
                object_id=",".join(str(o) for o in exp.get("obj_id", [])), width=w, height=h,
                num_frames=len(frames), masks=masks, absent_frames=[f for f in range(len(frames)) if f not in masks],
                first_frame_index=first, first_frame_box=ffb, root=root, extra={"frames": frames}))
    return out


def load_segmentation(path: str | Path, root: str | Path | None = None) -> list[SegmentationRecord]:
    """Segmentation/tracking records. ``root``: the folder mask ``file`` paths are relative to (default:
    the annotation file's folder). Masks are decoded lazily by ``SegmentationRecord.mask(frame)``."""
    path, data = _read_json(path)
    root = Path(root) if root is not None else path.parent
    if isinstance(data, dict) and "videos" in data:
        return _mevis_records(path, root, data)
    if not isinstance(data, list):
        raise AnnotationError(f"{path}: must hold a JSON list of segmentation records (or a MeViS "
                              f"meta_expressions dict with 'videos'), got {type(data).__name__}")
    return [_seg_record(path, root, i, rec) for i, rec in enumerate(data)]


# ------------------------------------------------------------------------------------------ conversations
@dataclass
class Conversation:
    """LLaVA-style: ``turns`` = [(from, value), ...] alternating human/gpt, starting with human."""

    id: str
    video: str | None
    turns: list[tuple[str, str]]
    extra: dict = field(default_factory=dict)

    def pairs(self) -> list[tuple[str, str]]:
        """(question, answer) pairs with the ``<video>``/``<image>`` marker and its newline removed."""
        out = []
        for (_, q), (_, a) in zip(self.turns[0::2], self.turns[1::2]):
            for marker in ("<video>\n", "<image>\n", "<video>", "<image>"):
                q = q.replace(marker, "")
            out.append((q.strip(), a))
        return out


def _conversation(path: Path, i: int, rec: Any) -> Conversation:
    where = _where(i, rec)
    if not isinstance(rec, dict):
        raise _fail(path, where, f"must be a JSON object, got {type(rec).__name__}")
    turns = _need(path, where, rec, "conversations", list)
    if not turns or len(turns) % 2:
        raise _fail(path, where, f"field 'conversations' needs an even, non-zero number of turns, got {len(turns)}")
    out = []
    for j, t in enumerate(turns):
        expected = ("human", "gpt")[j % 2]
        if not (isinstance(t, dict) and t.get("from") == expected and isinstance(t.get("value"), str)):
            raise _fail(path, where, f"field 'conversations'[{j}] must be {{'from': {expected!r}, 'value': str}} "
                                     f"(turns alternate human/gpt), got {str(t)[:80]}")
        out.append((t["from"], t["value"]))
    media = rec.get("video", rec.get("image"))
    return Conversation(id=str(rec.get("id", i)), video=media, turns=out,
                        extra={k: v for k, v in rec.items() if k not in ("id", "video", "image", "conversations")})


def load_conversations(path: str | Path) -> list[Conversation]:
    path, data = _read_json(path)
    if not isinstance(data, list):
        raise AnnotationError(f"{path}: must hold a JSON list of LLaVA-style records, got {type(data).__name__}")
    return [_conversation(path, i, rec) for i, rec in enumerate(data)]
