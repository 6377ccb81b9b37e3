"""Video reading (decord) and the model's frame preprocessing.

- ``read_video(path, num_frames)`` samples ``num_frames`` frames with the release's middle-of-segment rule
  and returns a ``VideoClip`` (frames uint8 RGB ``[T, H, W, 3]``, indices ``[T]``, timestamps ``[T]`` s).
- ``iter_frames(path, stride)`` yields ``(index, timestamp_s, frame [H, W, 3] uint8)`` in order, decoding
  in small batches (a streaming-like read that never holds the whole video).
- ``preprocess_frames(frames, size, mean, std)`` -> float32 ``[T, 3, size, size]`` for the vision encoder.

Every failure to read a video raises ``VideoReadError`` (a ``ValueError``) naming the file, the problem
and the fix. Cheap checks run before decord sees the file (missing, empty, an image file) because decord
prints FFmpeg noise and its errors ("Error reading x.mp4...", "cannot find video stream with wanted index:
-1") do not say what is wrong. Measured with decord 0.6.0: a truncated MP4 whose ``moov`` atom is at the
end (the default of most muxers) fails to open ("moov atom not found"); one written with faststart
(``moov`` first) fails while decord indexes packets ("av_read_frame failed") or, when only the last few
packets are missing, opens and then fails while decoding the last frames. Both surface here as
``VideoReadError`` (truncated/corrupt). Codecs that decord's FFmpeg 4.1 cannot decode (AV1, for example)
are diagnosed with PyAV, when installed, so the error names the codec.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_IMAGE_MAGIC = {
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"\xff\xd8\xff": "JPEG",
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
    b"BM": "BMP",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
}
_FIX_REENCODE = "re-encode it, e.g. `ffmpeg -i IN -c:v libx264 -pix_fmt yuv420p OUT.mp4`"


class VideoReadError(ValueError):
    """A video file could not be read; the message names the file, the problem and the fix."""


@dataclass
class VideoClip:
    """Frames sampled from one video.

    ``frames``: uint8 RGB ``[T, H', W', 3]`` (``H' = height`` and ``W' = width`` unless ``max_side``
    shrank them); ``indices``: int64 ``[T]`` frame indices; ``timestamps``: float64 ``[T]`` seconds
    (``index / fps``); ``height``/``width``: the video's own resolution; ``duration = num_total_frames / fps``.
    """

    frames: np.ndarray
    indices: np.ndarray
    timestamps: np.ndarray
    fps: float
    num_total_frames: int
    duration: float
    height: int
    width: int
    path: str


def sample_indices(num_total: int, num_frames: int) -> np.ndarray:
    """Middle-of-segment sampling: segment i of ``num_frames`` equal segments -> ``int((i + 0.5) * n / T)``.

    Returns int64 ``[num_frames]``, clamped to ``[0, num_total - 1]`` (indices repeat when T > n).
    """
    if num_total <= 0 or num_frames <= 0:
        raise ValueError(f"sample_indices needs num_total > 0 and num_frames > 0, got {num_total}, {num_frames}")
    idx = ((np.arange(num_frames) + 0.5) * num_total / num_frames).astype(np.int64)
    return np.clip(idx, 0, num_total - 1)


def _sniff(path: Path) -> None:
    """Cheap checks before decord: exists, is a non-empty file, is not an image."""
    if not path.exists():
        raise VideoReadError(f"video {path} does not exist; check the path (relative paths resolve against "
                             f"{Path.cwd()})")
    if not path.is_file():
        raise VideoReadError(f"video {path} is not a regular file (a directory?); pass the path of a video file")
    size = path.stat().st_size
    if size == 0:
        raise VideoReadError(f"video {path} is empty (0 bytes); the download or copy failed: fetch it again")
    with open(path, "rb") as fh:
        head = fh.read(16)
    for magic, kind in _IMAGE_MAGIC.items():
        if head.startswith(magic):
            raise VideoReadError(f"{path} is a {kind} image, not a video; pass a video file (mp4, mkv, webm, "
                                 "avi), or turn image frames into one with `ffmpeg -i frame_%05d.png out.mp4`")
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        raise VideoReadError(f"{path} is a WEBP image, not a video; pass a video file")
    if head[4:8] == b"ftyp":
        _check_mp4_atoms(path, size)


def _check_mp4_atoms(path: Path, size: int) -> None:
    """Walk the top-level MP4/MOV atoms (a few header reads): catch truncation before decord does."""
    pos, names = 0, []
    with open(path, "rb") as fh:
        while pos + 8 <= size and len(names) < 1000:
            fh.seek(pos)
            hdr = fh.read(16)
            length, name = int.from_bytes(hdr[:4], "big"), hdr[4:8]
            if length == 1 and len(hdr) == 16:
                length = int.from_bytes(hdr[8:16], "big")
            elif length == 0:  # atom runs to the end of the file
                length = size - pos
            if length < 8:
                break
            names.append(name)
            if pos + length > size:
                raise VideoReadError(f"video {path} is truncated: atom {name.decode('latin-1')!r} at byte {pos} "
                                     f"needs {length} bytes but the file ends at {size}; fetch the file again")
            pos += length
    if b"moov" not in names and b"moof" not in names:
        raise VideoReadError(f"video {path} is truncated or corrupt: no 'moov' atom (the index of an MP4) among "
                             f"{[n.decode('latin-1') for n in names]}; fetch the file again or {_FIX_REENCODE}")


def _diagnose(path: Path, err: Exception) -> VideoReadError:
    """Turn a decord failure into a VideoReadError; use PyAV (if present) to name an unsupported codec."""
    detail = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
    codec = None
    try:
        import av  # optional: only to say which codec is in the file
    except ImportError:
        av = None
    if av is not None:
        try:
            with av.open(str(path)) as container:
                streams = container.streams.video
                if not streams:
                    return VideoReadError(f"video {path} has no decodable video stream (audio only, or a video track "
                                          "with zero frames); pass a file that holds video frames")
                codec = getattr(streams[0].codec_context.codec, "canonical_name", None) or streams[0].codec_context.name
        except (av.FFmpegError, ValueError, OSError):
            codec = None
    if codec is not None and ("wanted index" in detail or "stream" in detail):
        return VideoReadError(f"video {path} uses codec {codec!r}, which decord's FFmpeg cannot decode; "
                              f"{_FIX_REENCODE}")
    return VideoReadError(f"video {path} is truncated or corrupt (decord: {detail}); fetch the file again or "
                          f"{_FIX_REENCODE}")


def _open(path: str | Path):
    """-> (decord.VideoReader, Path). Errors become VideoReadError."""
    import decord

    path = Path(path)
    _sniff(path)
    decord.logging.set_level(decord.logging.QUIET)
    try:
        vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    except (decord.DECORDError, RuntimeError) as err:
        raise _diagnose(path, err) from err
    if len(vr) == 0:
        raise VideoReadError(f"video {path} has zero frames; it is empty or broken: fetch it again")
    return vr, path


def _fps(vr, path: Path) -> float:
    fps = float(vr.get_avg_fps())
    if not np.isfinite(fps) or fps <= 0:
        raise VideoReadError(f"video {path} reports fps={fps}; remux it with a frame rate, e.g. "
                             "`ffmpeg -i IN -r 30 OUT.mp4`")
    return fps


def _get(vr, path: Path, indices: Sequence[int]) -> np.ndarray:
    import decord

    try:
        return vr.get_batch(list(indices)).asnumpy()
    except (decord.DECORDError, RuntimeError) as err:
        raise _diagnose(path, err) from err


def read_video(path: str | Path, num_frames: int, *, max_side: int | None = None) -> VideoClip:
    """Read ``num_frames`` middle-of-segment frames of the video at ``path``.

    ``max_side``: if given and the longer side exceeds it, frames are shrunk (OpenCV ``INTER_AREA``, aspect
    kept) so the longer side is ``max_side``. decord's own resize is not used: with decord 0.6.0 it fails
    for widths that are not a multiple of 32. ``height``/``width`` stay the video's own resolution;
    ``frames.shape`` gives the returned size.
    """
    if not isinstance(num_frames, int) or num_frames <= 0:
        raise ValueError(f"read_video: num_frames must be a positive int, got {num_frames!r}")
    if max_side is not None and max_side <= 0:
        raise ValueError(f"read_video: max_side must be a positive int or None, got {max_side!r}")
    vr, p = _open(path)
    fps = _fps(vr, p)
    n = len(vr)
    indices = sample_indices(n, num_frames)
    frames = _get(vr, p, indices)
    height, width = (int(v) for v in frames.shape[1:3])
    if max_side is not None and max(height, width) > max_side:
        frames = _shrink(frames, max_side)
    return VideoClip(frames=np.ascontiguousarray(frames, dtype=np.uint8), indices=indices,
                     timestamps=indices / fps, fps=fps, num_total_frames=n, duration=n / fps,
                     height=height, width=width, path=str(p))


def _shrink(frames: np.ndarray, max_side: int) -> np.ndarray:
    """uint8 [T, H, W, 3] -> [T, h, w, 3] with max(h, w) == max_side (area interpolation)."""
    import cv2

    h, w = frames.shape[1:3]
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.stack([cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames])


def video_info(path: str | Path) -> dict:
    """``{"fps", "num_frames", "duration", "height", "width"}`` without decoding more than one frame."""
    vr, p = _open(path)
    fps = _fps(vr, p)
    h, w = _get(vr, p, [0]).shape[1:3]
    return {"fps": fps, "num_frames": len(vr), "duration": len(vr) / fps, "height": int(h), "width": int(w)}


def iter_frames(path: str | Path, stride: int = 1, *, batch: int = 16) -> Iterator[tuple[int, float, np.ndarray]]:
    """Yield ``(index, timestamp_s, frame uint8 [H, W, 3])`` for indices ``0, stride, 2*stride, ...``.

    Frames are decoded ``batch`` at a time, so memory stays at ``batch`` frames.
    """
    if not isinstance(stride, int) or stride <= 0:
        raise ValueError(f"iter_frames: stride must be a positive int, got {stride!r}")
    vr, p = _open(path)
    fps = _fps(vr, p)
    indices = list(range(0, len(vr), stride))
    for start in range(0, len(indices), batch):
        chunk = indices[start:start + batch]
        frames = _get(vr, p, chunk)
        for i, frame in zip(chunk, frames):
            yield i, i / fps, frame


def preprocess_frames(frames, size: int, mean: Sequence[float], std: Sequence[float],
                      mode: str = "bicubic"):
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


__all__ = ["VideoClip", "VideoReadError", "iter_frames", "preprocess_frames", "read_video", "sample_indices",
           "video_info"]
