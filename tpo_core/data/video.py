"""Video reading for training and the reference model, on top of the runtime's reader (one implementation).

- ``read_video(path, num_frames)``: ``runtime.video_io.read_clip`` (middle-of-segment sampling, the same checks
  and errors as the runtime), optionally shrunk to ``max_side``; returns a ``runtime.video_io.Clip``.
- ``iter_frames(path, stride)`` yields ``(index, timestamp_s, frame [H, W, 3] uint8)`` in order, decoding in
  small batches (never the whole video); a frame that fails to decode raises ``VideoReadError``.
- ``video_info(path)``: fps, frame count, duration, size.
- ``preprocess_frames(frames, size, mean, std)`` -> float32 torch ``[T, 3, size, size]`` for the vision encoder.

Every failure to read a video raises ``VideoReadError`` (a ``ValueError``) naming the file, the problem and the
fix (see ``runtime/video_io.py``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from runtime.preprocess import sample_indices
from runtime.video_io import Clip, VideoReadError, decode_frames, file_frames, open_video, read_clip


def read_video(path: str | Path, num_frames: int, *, max_side: int | None = None) -> Clip:
    """Read ``num_frames`` middle-of-segment frames of the video at ``path``.

    ``max_side``: if given and the longer side exceeds it, frames are shrunk (OpenCV ``INTER_AREA``, aspect kept)
    so the longer side is ``max_side``. ``height``/``width`` stay the video's own resolution; ``frames.shape``
    gives the returned size.
    """
    if not isinstance(num_frames, int) or num_frames <= 0:
        raise ValueError(f"read_video: num_frames must be a positive int, got {num_frames!r}")
    if max_side is not None and max_side <= 0:
        raise ValueError(f"read_video: max_side must be a positive int or None, got {max_side!r}")
    clip = read_clip(path, num_frames, threads=1)  # one decoder thread: loaders and evaluators run many readers
    if max_side is not None and max(clip.frames.shape[1:3]) > max_side:
        clip.frames = _shrink(clip.frames, max_side)
    return clip


def _shrink(frames: np.ndarray, max_side: int) -> np.ndarray:
    """uint8 [T, H, W, 3] -> [T, h, w, 3] with max(h, w) == max_side (area interpolation)."""
    import cv2

    h, w = frames.shape[1:3]
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.stack([cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames])


def video_info(path: str | Path) -> dict:
    """``{"fps", "num_frames", "duration", "height", "width"}`` without decoding more than one frame."""
    vr, fps = open_video(path)
    h, w = decode_frames(vr, Path(path), [0]).shape[1:3]
    return {"fps": fps, "num_frames": len(vr), "duration": len(vr) / fps, "height": int(h), "width": int(w)}


def iter_frames(path: str | Path, stride: int = 1, *, batch: int = 16) -> Iterator[tuple[int, float, np.ndarray]]:
    """Yield ``(index, timestamp_s, frame uint8 [H, W, 3])`` for indices ``0, stride, 2*stride, ...``.

    Frames are decoded ``batch`` at a time, so memory stays at ``batch`` frames. Opening errors raise on the first
    ``next``; a frame that cannot be decoded raises ``VideoReadError`` (training data must be whole).
    """
    if not isinstance(stride, int) or stride <= 0:
        raise ValueError(f"iter_frames: stride must be a positive int, got {stride!r}")
    for sf in file_frames(Path(path), batch=batch, stride=stride):
        if sf.error is not None:
            raise VideoReadError(sf.error)
        yield sf.index, sf.timestamp, sf.frame


def preprocess_frames(frames, size: int, mean: Sequence[float], std: Sequence[float], mode: str = "bicubic"):
    """uint8 RGB frames ``[T, H, W, 3]`` (numpy or torch) -> float32 torch ``[T, 3, size, size]``.

    Steps (as the release's transform): to float in [0, 255], ``torch.nn.functional.interpolate`` to
    ``size x size`` (``mode`` bicubic or bilinear, ``align_corners=False``, ``antialias=False``; the aspect
    ratio is not kept), clamp to [0, 255] (bicubic overshoots), divide by 255, then
    ``(x - mean) / std`` per channel with ``mean``/``std`` in [0, 1] units (ImageNet by default in the config).
    """
    import torch
    import torch.nn.functional as F

    if mode not in ("bicubic", "bilinear"):
        raise ValueError(f"preprocess_frames: mode={mode!r} is not allowed; choose 'bicubic' or 'bilinear'")
    x = torch.as_tensor(np.asarray(frames) if not isinstance(frames, torch.Tensor) else frames)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"preprocess_frames: frames must be [T, H, W, 3] RGB, got shape {tuple(x.shape)}")
    if x.dtype != torch.uint8:
        raise ValueError(f"preprocess_frames: frames must be uint8 in [0, 255], got {x.dtype}; "
                         "convert with frames.astype(np.uint8)")
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"preprocess_frames: mean and std need 3 values, got {mean}, {std}")
    x = x.permute(0, 3, 1, 2).float()
    if tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode=mode, align_corners=False, antialias=False)
    x = x.clamp_(0.0, 255.0).div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return ((x - m) / s).contiguous()


__all__ = ["Clip", "VideoReadError", "iter_frames", "preprocess_frames", "read_video",
           "sample_indices", "video_info"]
