"""Training batches from ``TaskSample``s: frames, token layout, labels and per-head targets.

Sequence layout of one sample (``PromptBuilder.build(question, times, answer)``)::

    pre ids | Nq visual slots | post ids | answer ids (incl. *_begin, placeholder, EOS) | padding

- ``input_ids [B, L]``: the visual slots and the padding hold ``pad_id``; ``visual_mask [B, L]`` marks the
  slots (the objective scatters the connector's visual tokens there).
- ``labels [B, L]``: the answer ids at their own positions (the objective shifts by one), ``-100`` elsewhere:
  prompt, visual slots, padding and the task placeholders (``<boxes>``, ``<temp>``, ``<tracking>``: the
  runtime forces them after a ``*_begin``, so they are never predicted).
- ``attention_mask [B, L]``: 1 on real tokens, 0 on the right padding.
- ``placeholder_pos [B]``: position of the task placeholder (the head reads the hidden state there), -1 if none.
- ``visual_start``: the position of the first visual slot when it is the same in every row (the prompt layout
  puts the visual tokens right after the same ``pre`` ids), else None.

Head targets (only for the samples of that task; ``head_items[head]`` lists their batch indices in order,
``head_index[head]`` the same as an int64 tensor):
- region: ``region_boxes [Br, 4]`` normalized xyxy.
- temporal: ``temporal_spans`` (Bt tensors [n_i, 2], (center, width) / duration), ``temporal_relevance``
  [Bt, T] per-frame relevance (> 0 inside a ground-truth window), ``frame_times [B, T]`` (time / duration),
  ``temporal_groups`` (``losses.span_groups`` of the spans) and ``temporal_levels`` (the distinct positive
  relevance levels), so the loss needs nothing back from the device.
- mask: ``mask_frames`` (Bm uint8 tensors [Tm, H, W, 3], frame 0 of the clip first), ``mask_pixels
  [Bm, Tm, 3, Sm, Sm]`` (those frames through the mask head's preprocessing, done here on the CPU),
  ``mask_targets [Bm, Tm, s, s]`` {0, 1} at the head's low-res size ``s = image_size / 4``, ``mask_boxes
  [Bm, 4]`` normalized xyxy of the object on mask frame 0.

Patch labels (synthetic data with ``patch_labels.npz``, a ``PatchLabels`` given to the collator): ``patch_cover
[B, T, P, K]`` float32 (the fraction of patch p of frame t showing slot k: background or one of the video's
objects), ``patch_classes [B, K]`` int64 (each slot's class), ``patch_valid [B]`` (1.0 where the sample's video
has labels for exactly these frames); all None when no sample of the batch has them.

Every tensor is built on the CPU; ``Batch.pin_memory`` / ``Batch.to(device)`` (non-blocking) move them.
Decoded clips are cached (``ClipCache``; with a ``clip_store.ClipStore`` they are read from the store written
once per dataset instead of decoded) so each video is decoded at most once per run.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field, fields

import numpy as np
import torch

from ..config import TPOConfig
from ..modeling.heads.mask import preprocess_mask_frames
from ..modeling.losses import span_groups
from ..prompting import PromptBuilder
from .video import Clip, preprocess_frames, read_video

IGNORE_INDEX = -100
TASKS = ("region", "temporal", "mask", "qa", "negative")
TEXT_TASKS = ("qa", "negative")  # answered in text: no head, no placeholder


class ClipCache:
    """Decoded ``Clip``s keyed by path, LRU, bounded by ``max_bytes`` of frame data."""

    def __init__(self, num_frames: int, max_bytes: int = 8 << 30, store=None):
        self.num_frames = num_frames
        self.max_bytes = max_bytes
        self.store = store  # a clip_store.ClipStore of this frame count, or None
        self._clips: OrderedDict[str, Clip] = OrderedDict()
        self._bytes = 0
        self.hits = self.misses = 0

    def get(self, path: str) -> Clip:
        clip = self._clips.get(path)
        if clip is not None:
            self._clips.move_to_end(path)
            self.hits += 1
            return clip
        self.misses += 1
        clip = self.store.get(path) if self.store is not None else None
        if clip is None:
            clip = read_video(path, self.num_frames)
        self._clips[path] = clip
        self._bytes += clip.frames.nbytes
        while self._bytes > self.max_bytes and len(self._clips) > 1:
            _, old = self._clips.popitem(last=False)
            self._bytes -= old.frames.nbytes
        return clip


@dataclass
class Batch:
    """One training micro-batch; see the module docstring for every field's meaning and shape."""

    frames: torch.Tensor  # [B, T, 3, S, S] float32
    input_ids: torch.Tensor  # [B, L] int64
    labels: torch.Tensor  # [B, L] int64
    attention_mask: torch.Tensor  # [B, L] int64
    visual_mask: torch.Tensor  # [B, L] bool
    placeholder_pos: torch.Tensor  # [B] int64, -1 = none
    frame_times: torch.Tensor  # [B, T] float32 in [0, 1]
    tasks: list[str]
    head_items: dict[str, list[int]]
    region_boxes: torch.Tensor  # [Br, 4]
    temporal_spans: list[torch.Tensor]  # Bt x [n_i, 2]
    temporal_relevance: torch.Tensor  # [Bt, T]
    mask_frames: list[torch.Tensor]  # Bm x uint8 [Tm, H, W, 3]
    mask_targets: torch.Tensor  # [Bm, Tm, s, s]
    mask_boxes: torch.Tensor  # [Bm, 4]
    ids: list[str] = field(default_factory=list)
    head_index: dict[str, torch.Tensor] = field(default_factory=dict)  # head -> int64 [n] (= head_items)
    visual_start: int | None = None
    temporal_groups: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    temporal_levels: torch.Tensor | None = None  # [R] distinct positive relevance levels
    mask_pixels: torch.Tensor | None = None  # [Bm, Tm, 3, Sm, Sm] float32
    patch_cover: torch.Tensor | None = None  # [B, T, P, K] float32, rows sum to 1 (zeros where not valid)
    patch_classes: torch.Tensor | None = None  # [B, K] int64
    patch_valid: torch.Tensor | None = None  # [B] float32 in {0, 1}

    def _map(self, fn) -> Batch:
        """A Batch with ``fn`` applied to every tensor (also inside lists, tuples and dicts)."""
        def conv(v):
            if isinstance(v, torch.Tensor):
                return fn(v)
            if isinstance(v, dict):
                return {k: conv(x) for k, x in v.items()}
            if isinstance(v, (list, tuple)):
                return type(v)(conv(x) for x in v)
            return v

        return Batch(**{f.name: conv(getattr(self, f.name)) for f in fields(self)})

    def to(self, device: torch.device | str) -> Batch:
        """Every tensor on ``device`` (non-blocking: from pinned memory the copies overlap the device's work)."""
        return self._map(lambda t: t.to(device, non_blocking=True))

    def pin_memory(self) -> Batch:
        """Every tensor in page-locked memory (``DataLoader(pin_memory=True)`` calls this)."""
        return self._map(lambda t: t.pin_memory())


def _frame_relevance(times: np.ndarray, windows: list, saliency: list, clip_len: float) -> np.ndarray:
    """Per-frame relevance [T]: the clip's saliency inside a ground-truth window (at least 1), else 0."""
    rel = np.zeros(len(times), dtype=np.float32)
    for i, t in enumerate(times):
        if any(float(s) <= t <= float(e) for s, e in windows):
            c = int(t // clip_len) if clip_len > 0 else 0
            rel[i] = max(1.0, float(saliency[c]) if 0 <= c < len(saliency) else 0.0)
    return rel


def _box_of(mask: np.ndarray) -> tuple[float, float, float, float] | None:
    """Normalized xyxy of a bool mask [H, W] (pixel edges: x1 = (max col + 1) / W), None when empty."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return None
    h, w = mask.shape
    return xs.min() / w, ys.min() / h, (xs.max() + 1) / w, (ys.max() + 1) / h


def _low_res(mask: np.ndarray, size: int) -> np.ndarray:
    """Bool [H, W] -> {0, 1} float32 [size, size] (area resize, then > 0.5)."""
    import cv2

    small = cv2.resize(mask.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)
    return (small > 0.5).astype(np.float32)


def _sample_mask(sample, frame_index: int) -> np.ndarray:
    """Bool mask [H, W] of the referred object at video frame ``frame_index``."""
    seg = getattr(sample, "segmentation", None)
    if seg is not None and hasattr(seg, "mask"):
        return seg.mask(int(frame_index))
    from .formats import read_mask_png

    path = sample.mask_files[frame_index] if frame_index < len(sample.mask_files) else None
    if path is None:
        raise ValueError(f"mask sample {sample.id!r}: no segmentation record and no mask file for frame "
                         f"{frame_index}; absent frames need the segmentation record")
    return read_mask_png(path)


class TPOCollator:
    """``list[TaskSample] -> Batch`` for a model config (see module docstring).

    mask_frames: frames the mask head tracks in training (frame 0 of the clip + ``mask_frames - 1`` later
    sampled frames, chosen with a generator seeded by ``(seed, key)`` so batches are reproducible).
    """

    def __init__(self, config: TPOConfig, prompts: PromptBuilder, mask_frames: int = 4, seed: int = 0,
                 cache: ClipCache | None = None, pad_id: int | None = None, patch_labels=None):
        if not 1 <= mask_frames <= config.vision.num_frames:
            raise ValueError(f"mask_frames={mask_frames} must be in [1, num_frames={config.vision.num_frames}]")
        self.cfg = config
        self.prompts = prompts
        self.mask_frames = mask_frames
        self.seed = seed
        self.cache = cache or ClipCache(config.vision.num_frames)
        self.pad_id = prompts.eos_id if pad_id is None else pad_id
        self.placeholders = {prompts.task_ids.boxes, prompts.task_ids.temp, prompts.task_ids.tracking}
        self._pixels: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.patch_labels = patch_labels  # a patch_labels.PatchLabels or None

    def clip(self, sample) -> Clip:
        if not sample.video:
            raise ValueError(f"sample {sample.id!r} ({sample.task}) has no video; every TPO sample needs one")
        return self.cache.get(sample.video)

    def pixels(self, clip: Clip) -> torch.Tensor:
        """Vision-encoder input of a clip [T, 3, S, S] (cached beside the clip, small at tiny sizes)."""
        px = self._pixels.get(clip.path)
        if px is None:
            v = self.cfg.vision
            px = preprocess_frames(clip.frames, v.img_size, v.mean, v.std, mode=v.resize)
            self._pixels[clip.path] = px
            while len(self._pixels) > len(self.cache._clips) + 64:
                self._pixels.popitem(last=False)
        return px

    def encode_tokens(self, sample, clip: Clip) -> tuple[list[int], list[int], list[bool], int]:
        """-> (input_ids, labels, visual flags, placeholder position or -1), all of one length."""
        p = self.prompts.build(sample.question, clip.timestamps, sample.answer)
        ids = p.pre + [self.pad_id] * p.num_visual + p.post + p.answer
        visual = [False] * len(p.pre) + [True] * p.num_visual + [False] * (len(p.post) + len(p.answer))
        labels = [IGNORE_INDEX] * p.prompt_len + [IGNORE_INDEX if t in self.placeholders else t for t in p.answer]
        pos = next((p.prompt_len + i for i, t in enumerate(p.answer) if t in self.placeholders), -1)
        if sample.task not in TEXT_TASKS and pos < 0:
            raise ValueError(f"{sample.task} sample {sample.id!r}: answer {sample.answer!r} holds no task "
                             "placeholder; task answers must contain e.g. '<box_begin><boxes>'")
        return ids, labels, visual, pos

    def _mask_targets(self, sample, clip: Clip, key: int) -> tuple[torch.Tensor, np.ndarray, tuple]:
        t = clip.frames.shape[0]
        rng = np.random.default_rng([self.seed, key, len(sample.id)])
        later = np.sort(rng.choice(np.arange(1, t), size=self.mask_frames - 1, replace=False)) if t > 1 else []
        chosen = [0, *[int(i) for i in later]]
        s = self.cfg.mask.low_res_size
        masks = [_sample_mask(sample, int(clip.indices[k])) for k in chosen]
        box = _box_of(masks[0]) or tuple(sample.first_frame_box or (0.0, 0.0, 0.0, 0.0))
        targets = np.stack([_low_res(m, s) for m in masks])
        return torch.from_numpy(np.ascontiguousarray(clip.frames[chosen])), targets, box

    def _patch_targets(self, clips: list[Clip]) -> tuple:
        """-> (patch_cover [B, T, P, K], patch_classes [B, K], patch_valid [B]) or Nones (module docstring)."""
        if self.patch_labels is None:
            return None, None, None
        got = [self.patch_labels.get(c.path, c.indices) for c in clips]
        first = next((g for g in got if g is not None), None)
        if first is None:
            return None, None, None
        cover = np.zeros((len(clips), *first[0].shape), np.float32)
        classes = np.zeros((len(clips), first[1].shape[0]), np.int64)
        valid = np.zeros(len(clips), np.float32)
        for i, g in enumerate(got):
            if g is not None:
                cover[i], classes[i], valid[i] = g[0], g[1], 1.0
        return torch.from_numpy(cover), torch.from_numpy(classes), torch.from_numpy(valid)

    def __call__(self, samples: list, key: int = 0) -> Batch:
        """Collate ``samples``; ``key`` (e.g. the global micro-batch index) seeds the mask-frame choice."""
        if not samples:
            raise ValueError("cannot collate an empty list of samples")
        clips = [self.clip(s) for s in samples]
        rows = [self.encode_tokens(s, c) for s, c in zip(samples, clips)]
        length = max(len(r[0]) for r in rows)
        b = len(samples)
        ids = torch.full((b, length), self.pad_id, dtype=torch.long)
        labels = torch.full((b, length), IGNORE_INDEX, dtype=torch.long)
        attn = torch.zeros((b, length), dtype=torch.long)
        vis = torch.zeros((b, length), dtype=torch.bool)
        for i, (r_ids, r_lab, r_vis, _) in enumerate(rows):
            n = len(r_ids)
            ids[i, :n], labels[i, :n], attn[i, :n] = torch.tensor(r_ids), torch.tensor(r_lab), 1
            vis[i, :n] = torch.tensor(r_vis)
        head_items: dict[str, list[int]] = {"region": [], "temporal": [], "mask": []}
        region, spans, rel, mframes, mtargets, mboxes, mpixels = [], [], [], [], [], [], []
        times = []
        for i, (s, c) in enumerate(zip(samples, clips)):
            dur = float(s.duration or c.duration)
            times.append(np.clip(c.timestamps / max(dur, 1e-6), 0.0, 1.0))
            if s.task == "region":
                head_items["region"].append(i)
                region.append(s.box)
            elif s.task == "temporal":
                head_items["temporal"].append(i)
                w = np.asarray(s.windows, dtype=np.float32).reshape(-1, 2) / max(dur, 1e-6)
                spans.append(torch.from_numpy(np.stack([w.mean(1), w[:, 1] - w[:, 0]], 1).clip(0, 1)))
                rel.append(_frame_relevance(c.timestamps, s.windows, s.saliency, s.clip_len))
            elif s.task == "mask":
                head_items["mask"].append(i)
                frames, targets, box = self._mask_targets(s, c, key * 1009 + i)
                mpixels.append(preprocess_mask_frames(frames, self.cfg.mask.image_size))
                mframes.append(frames)
                mtargets.append(targets)
                mboxes.append(box)
            elif s.task not in TEXT_TASKS:
                raise ValueError(f"sample {s.id!r} has task {s.task!r}; allowed: {TASKS}")
        t, sm = self.cfg.vision.num_frames, self.cfg.mask.low_res_size
        starts = {r[2].index(True) if True in r[2] else -1 for r in rows}
        relevance = torch.from_numpy(np.stack(rel)) if rel else torch.zeros(0, t)
        patch_cover, patch_classes, patch_valid = self._patch_targets(clips)
        return Batch(
            frames=torch.stack([self.pixels(c) for c in clips]), input_ids=ids, labels=labels, attention_mask=attn,
            visual_mask=vis, placeholder_pos=torch.tensor([r[3] for r in rows], dtype=torch.long),
            frame_times=torch.from_numpy(np.stack(times).astype(np.float32)), tasks=[s.task for s in samples],
            head_items=head_items, region_boxes=torch.tensor(region, dtype=torch.float32).reshape(-1, 4),
            temporal_spans=spans, temporal_relevance=relevance,
            mask_frames=mframes,
            mask_targets=torch.from_numpy(np.stack(mtargets)) if mtargets else torch.zeros(0, self.mask_frames, sm, sm),
            mask_boxes=torch.tensor(mboxes, dtype=torch.float32).reshape(-1, 4), ids=[s.id for s in samples],
            head_index={k: torch.tensor(v, dtype=torch.int64) for k, v in head_items.items()},
            visual_start=starts.pop() if len(starts) == 1 and -1 not in starts else None,
            temporal_groups=span_groups(spans), temporal_levels=torch.unique(relevance[relevance > 0]),
            mask_pixels=torch.stack(mpixels) if mpixels else None,
            patch_cover=patch_cover, patch_classes=patch_classes, patch_valid=patch_valid,
        )
