"""Video sources and the annotated MP4 writer (no torch, no tpo_core).

- :func:`read_clip`: a video file -> :class:`Clip` of ``num_frames`` middle-of-segment frames (decord), with the
  same checks and errors as the reference reader (missing, empty, an image, truncated MP4, undecodable). Times
  are the frames' presentation timestamps (:func:`frame_times`): a variable-frame-rate file gets its true times,
  a constant-rate one exactly ``index / fps``. A video with fewer frames than sampled gets a note.
- :func:`file_frames`: a video file for streaming -> iterator of :class:`SourceFrame` (decord, decoded in small
  batches; per-frame decode failures are yielded as frames with ``error`` set, never raised).
- Without decord (PyPI has no aarch64 wheel: Jetson, Grace) both read with PyAV instead (:func:`read_clip_pyav`,
  decoding in order; the same sampled indices and presentation-time rule), and the clip's notes say so.
- The other sources (camera, URL, iterables) and the dispatch are :mod:`runtime.sources`: a source that cannot be
  opened raises :class:`SourceError` at once (with a timeout for network streams: no hang), and a network stream
  that stalls mid-way raises :class:`SourceError` saying so.
- Writing annotated videos: :mod:`runtime.annotate`.

Resolution policy (documented in docs/runtime.md): frames whose longer side exceeds ``MAX_SIDE`` (8192, i.e.
beyond 8K UHD 7680x4320) are decoded downscaled to that longer side (aspect kept) and the result carries a
note; boxes are still reported in the source's pixels; masks are at the decoded resolution.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from runtime.preprocess import sample_indices

MAX_SIDE = 8192
STREAM_OPEN_TIMEOUT_S = 10.0
STREAM_STALL_TIMEOUT_S = 10.0  # a network stream with no data for this long has stalled
CFR_TOLERANCE_S = 1e-3  # presentation times within this of index / fps: a constant frame rate
# decord's decoder threads per reader (0: FFmpeg's choice): half the cores, at most 8. Reading 16 of 240 frames of
# a 1080p30 clip (GOP 30) on the H200 host (6 cores given): 712 ms at 1 thread, 467 at 4, 382 at 8, 458 at FFmpeg's
# choice; on the 2-core box 1 thread was fastest (1.35 s vs 1.63 s at 2). Data loaders, which run many readers at
# once, pass threads=1 (tpo_core.data.video).
DECODE_THREADS = min(8, max(1, (os.cpu_count() or 2) // 2))
_IMAGE_MAGIC = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"GIF87a": "GIF", b"GIF89a": "GIF",
                b"BM": "BMP", b"II*\x00": "TIFF", b"MM\x00*": "TIFF"}
_FIX = "re-encode it, e.g. `ffmpeg -i IN -c:v libx264 -pix_fmt yuv420p OUT.mp4`"
# codecs decord's bundled FFmpeg decodes (the ones tested: H.264, HEVC, MPEG-4 Part 2, VP8/9, MJPEG, ...)
DECORD_CODECS = ("h264", "hevc", "mpeg4", "vp8", "vp9", "mjpeg", "mpeg2video", "mpeg1video", "msmpeg4v3", "h263",
                 "theora", "rawvideo", "prores", "ffv1")


PYAV_NOTE = "decoded with PyAV: decord is not installed (it has no wheel for this platform)"


def decord_available() -> bool:
    """Whether decord can be imported (x86-64 wheels only); without it the readers here use PyAV."""
    return importlib.util.find_spec("decord") is not None


class VideoReadError(ValueError):
    """A video could not be read; the message names the file, the problem and the fix."""


class SourceError(ValueError):
    """A streaming source could not be opened, or a network stream stalled."""


@dataclass
class Clip:
    """Sampled frames of one video (what the reference model, the verifier and the runtime all take).

    frames: uint8 RGB ``[T, h, w, 3]`` (``h, w`` = the video's size unless downscaled, see ``notes``);
    timestamps: float64 ``[T]`` seconds; width/height: the source's own size; duration: seconds;
    indices: int64 ``[T]`` frame numbers in the source (None when the frames did not come from one);
    num_total_frames: frames in the source (0 when unknown).
    """

    frames: np.ndarray
    timestamps: np.ndarray
    duration: float
    width: int
    height: int
    fps: float = 0.0
    path: str = ""
    notes: list[str] = field(default_factory=list)
    indices: np.ndarray | None = None
    num_total_frames: int = 0


def check_video_file(path: Path) -> None:
    """Cheap checks before any decoder: exists, a non-empty regular file, not an image, MP4 atoms complete."""
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
            raise VideoReadError(f"{path} is a {kind} image, not a video; pass a video file (mp4, mkv, webm, avi), "
                                 "or make one from images with `ffmpeg -i frame_%05d.png out.mp4`")
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        raise VideoReadError(f"{path} is a WEBP image, not a video; pass a video file")
    if head[4:8] == b"ftyp":
        _check_mp4_atoms(path, size)


def _check_mp4_atoms(path: Path, size: int) -> None:
    """Walk the top-level MP4 atoms: a truncated file is caught before the decoder sees it."""
    pos, names = 0, []
    with open(path, "rb") as fh:
        while pos + 8 <= size and len(names) < 1000:
            fh.seek(pos)
            hdr = fh.read(16)
            length, name = int.from_bytes(hdr[:4], "big"), hdr[4:8]
            if length == 1 and len(hdr) == 16:
                length = int.from_bytes(hdr[8:16], "big")
            elif length == 0:
                length = size - pos
            if length < 8:
                break
            names.append(name)
            if pos + length > size:
                raise VideoReadError(f"video {path} is truncated: atom {name.decode('latin-1')!r} at byte {pos} needs "
                                     f"{length} bytes but the file ends at {size}; fetch the file again")
            pos += length
    if b"moov" not in names and b"moof" not in names:
        raise VideoReadError(f"video {path} is truncated or corrupt: no 'moov' atom; fetch it again or {_FIX}")


def _decord_open(path: Path, width: int = -1, height: int = -1, threads: int | None = None):
    import decord

    decord.logging.set_level(decord.logging.QUIET)
    try:
        vr = decord.VideoReader(str(path), ctx=decord.cpu(0), width=width, height=height,
                                num_threads=DECODE_THREADS if threads is None else int(threads))
    except (decord.DECORDError, RuntimeError) as e:
        raise diagnose(path, e) from e
    if len(vr) == 0:
        raise VideoReadError(f"video {path} has zero frames; it is empty or broken: fetch it again")
    return vr


def first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def codec_name(path: Path) -> str | None:
    """The first video stream's codec as PyAV reports it ("" when the file has no video stream); None when PyAV is
    not installed or cannot open the file."""
    try:
        import av
    except ImportError:
        return None
    try:
        with av.open(str(path)) as container:
            streams = container.streams.video
            if not streams:
                return ""
            ctx = streams[0].codec_context
            return getattr(ctx.codec, "canonical_name", None) or ctx.name
    except (av.FFmpegError, ValueError, OSError):
        return None


def diagnose(path: Path, err: Exception) -> VideoReadError:
    """A decord failure -> a VideoReadError naming the problem: an unsupported codec (named through PyAV when it is
    installed) or a truncated / corrupt file, with the fix."""
    detail = first_line(err)
    codec = codec_name(path)
    if codec == "":
        return VideoReadError(f"video {path} has no decodable video stream (audio only, or a video track with zero "
                              "frames); pass a file that holds video frames")
    if codec is not None and codec not in DECORD_CODECS:
        return VideoReadError(f"video {path} uses codec {codec!r}, which this decoder (decord's FFmpeg 4) cannot "
                              f"decode; {_FIX}")
    return VideoReadError(f"video {path} is truncated or corrupt (decoding failed: {detail}); fetch it again or "
                          f"{_FIX}")


def _batch(vr, path: Path, indices) -> np.ndarray:
    import decord

    try:
        return vr.get_batch(list(indices)).asnumpy()
    except (decord.DECORDError, RuntimeError) as e:
        raise diagnose(path, e) from e


def scaled_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    """(h, w) with the longer side = ``max_side`` (aspect kept, even sizes)."""
    scale = max_side / max(height, width)
    return max(2, round(height * scale / 2) * 2), max(2, round(width * scale / 2) * 2)


def frame_times(vr, fps: float) -> tuple[np.ndarray, float]:
    """Presentation times float64 ``[n]`` (s, first frame at 0) and the duration of an opened decord reader
    (:func:`presentation_times` on decord's per-frame (start, end) timestamps)."""
    import decord

    n = len(vr)
    try:
        ts = np.asarray(vr.get_frame_timestamp(list(range(n))), np.float64).reshape(n, 2)
    except (decord.DECORDError, RuntimeError, ValueError):
        return np.arange(n, dtype=np.float64) / fps, n / fps
    return presentation_times(np.arange(n), ts[:, 0], fps, n, end=float(ts[-1, 1]))


def presentation_times(indices, starts, fps: float, total: int, end: float | None = None) -> tuple[np.ndarray, float]:
    """Frame times for frames ``indices`` whose presentation times are ``starts`` (s; ``starts[0]`` is frame 0's),
    and the duration, for a video of ``total`` frames at average ``fps``: the one rule every reader follows.

    A constant frame rate (every time within ``CFR_TOLERANCE_S`` of ``index / fps``) gives exactly ``index / fps``
    and ``total / fps``; otherwise (variable frame rate) the frames' own times (from frame 0's) and ``end`` (the end
    time of the last frame, when known; else the last time + 1 / fps).
    """
    idx = np.asarray(indices, np.int64)
    cfr = idx / fps
    start = np.asarray(starts, np.float64) - float(starts[0])
    if (not np.isfinite(start).all() or np.any(np.diff(start) < 0)
            or np.abs(start - cfr).max(initial=0.0) <= CFR_TOLERANCE_S):
        return cfr, total / fps
    last = float(start[-1]) + 1.0 / fps if end is None else end - float(starts[0])
    return start, float(max(last, start[-1]))


def few_frames_note(total: int, num_frames: int) -> str | None:
    """The note a clip carries when its source has fewer frames than are sampled (frames repeat)."""
    if total >= num_frames:
        return None
    if total == 1:
        return (f"the video has 1 frame: the {num_frames} frames the model sees are repeated copies of it, so "
                "answers about motion or time carry no information (spans are 0.0-0.0 s)")
    return (f"the video has only {total} frames: some of the {num_frames} frames the model sees are repeated "
            "copies")


def read_clip(path: str | Path, num_frames: int, max_side: int = MAX_SIDE, threads: int | None = None) -> Clip:
    """Read ``num_frames`` middle-of-segment frames (the reference's rule) of a video file; timestamps are the
    frames' presentation times (:func:`frame_times`). ``threads``: decord's decoder threads (None:
    ``DECODE_THREADS``; 0: FFmpeg's choice)."""
    p = Path(path)
    if not decord_available():
        clip = read_clip_pyav(p, num_frames, max_side)
        clip.notes.append(PYAV_NOTE)
        return clip
    vr, fps = open_video(p, threads)
    height, width = (int(v) for v in _batch(vr, p, [0]).shape[1:3])
    notes = []
    if max(height, width) > max_side:
        h2, w2 = scaled_size(height, width, max_side)
        notes.append(f"video is {width}x{height}, above the {max_side} px limit per side; decoded at {w2}x{h2}: "
                     "boxes are in source pixels, masks at the decoded size")
        vr = _decord_open(p, width=w2, height=h2, threads=threads)
    n = len(vr)
    times, duration = frame_times(vr, fps)
    idx = sample_indices(n, num_frames)
    few = few_frames_note(n, num_frames)
    notes += [few] if few else []
    frames = np.ascontiguousarray(_batch(vr, p, idx), dtype=np.uint8)
    return Clip(frames=frames, timestamps=times[idx], duration=duration, width=width, height=height, fps=fps,
                path=str(p), notes=notes, indices=idx, num_total_frames=n)


def clip_from_frames(frames: np.ndarray, num_frames: int, fps: float = 1.0, max_side: int = MAX_SIDE) -> Clip:
    """A uint8 ``[N, H, W, 3]`` array of consecutive frames at ``fps`` -> a Clip of ``num_frames`` sampled frames.

    A single image ``[H, W, 3]`` is refused (a video is needed); frames above ``max_side`` are refused too (resize
    them first; the array is already in memory, so downscaling here would hide a costly mistake).
    """
    x = np.asarray(frames)
    if x.ndim == 3 and x.shape[-1] in (3, 4):
        raise ValueError(f"got a single image of shape {x.shape}, not a video; pass frames [T, H, W, 3] (T >= 1) or a "
                         "video file")
    if x.ndim != 4 or x.shape[-1] != 3 or min(x.shape[:3]) == 0:
        raise ValueError(f"frames must be uint8 RGB [T, H, W, 3] with T, H, W > 0, got shape {x.shape}")
    if x.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {x.dtype}; convert with frames.astype(np.uint8)")
    if max(x.shape[1:3]) > max_side:
        raise ValueError(f"frames are {x.shape[2]}x{x.shape[1]}, above the {max_side} px limit per side; downscale "
                         "them first (e.g. cv2.resize with INTER_AREA)")
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    idx = sample_indices(x.shape[0], num_frames)
    few = few_frames_note(int(x.shape[0]), num_frames)
    return Clip(frames=np.ascontiguousarray(x[idx]), timestamps=idx / float(fps), duration=x.shape[0] / float(fps),
                width=int(x.shape[2]), height=int(x.shape[1]), fps=float(fps), notes=[few] if few else [],
                indices=idx, num_total_frames=int(x.shape[0]))


# ------------------------------------------------------------------------------------------------ streaming
@dataclass
class SourceFrame:
    """One frame of a source: ``frame`` uint8 RGB ``[H, W, 3]`` or None with ``error`` set."""

    index: int
    timestamp: float
    frame: np.ndarray | None
    error: str | None = None


def open_video(path: str | Path, threads: int | None = None):
    """A video file -> (decord VideoReader, fps); every failure is a VideoReadError naming the fix. ``threads``:
    decord's decoder threads (None: ``DECODE_THREADS``)."""
    p = Path(path)
    check_video_file(p)
    vr = _decord_open(p, threads=threads)
    fps = float(vr.get_avg_fps())
    if not np.isfinite(fps) or fps <= 0:
        raise VideoReadError(f"video {p} reports fps={fps}; remux it with a frame rate: `ffmpeg -i IN -r 30 OUT.mp4`")
    return vr, fps


def decode_frames(vr, path: Path, indices) -> np.ndarray:
    """uint8 RGB ``[len(indices), H, W, 3]`` of an opened reader; VideoReadError when decoding fails."""
    return _batch(vr, path, indices)


def file_frames(path: Path, batch: int = 8, stride: int = 1) -> Iterator[SourceFrame]:
    """Open (errors raise here, at once) and return the frame generator (presentation times, as read_clip)."""
    if not decord_available():
        check_video_file(Path(path))
        return _pyav_frames(Path(path), stride)
    vr, fps = open_video(path)
    return _decode_batches(vr, Path(path), frame_times(vr, fps)[0], batch, stride)


def video_duration(path: str | Path) -> float:
    """Seconds of a video file (decord's presentation times, or PyAV's stream metadata without decord)."""
    if decord_available():
        vr, fps = open_video(path)
        return frame_times(vr, fps)[1]
    import av

    check_video_file(Path(path))
    try:
        with av.open(str(path)) as container:
            st = container.streams.video[0]
            tb, fps = float(st.time_base or 0), float(st.average_rate or 0)
            if st.duration and tb:
                return float(st.duration * tb)
            if st.frames and fps > 0:
                return int(st.frames) / fps
    except av.error.FFmpegError as e:
        raise VideoReadError(f"video {path} cannot be opened ({first_line(e)}); {_FIX}") from e
    raise VideoReadError(f"video {path} reports neither a duration nor a frame count; remux it: "
                         "`ffmpeg -i IN -c copy OUT.mp4`")


def _pyav_frames(path: Path, stride: int = 1) -> Iterator[SourceFrame]:
    """Decode in order with PyAV; times from the frames' presentation times (first frame at 0). A decode error
    ends the file with one frame carrying the error (PyAV cannot resume past it)."""
    import av

    first, i = None, 0
    try:
        with av.open(str(path)) as container:
            for i, frame in enumerate(container.decode(video=0)):
                t = float(frame.time) if frame.time is not None else float(i)
                first = t if first is None else first
                if i % stride == 0:
                    yield SourceFrame(i, t - first, frame.to_ndarray(format="rgb24"))
    except av.error.FFmpegError as e:
        yield SourceFrame(i + 1, 0.0, None, f"decode error: {first_line(e)}")


def _decode_batches(vr, path: Path, times: np.ndarray, batch: int, stride: int = 1) -> Iterator[SourceFrame]:
    wanted = range(0, len(vr), stride)
    for start in range(0, len(wanted), batch):
        idx = list(wanted[start:start + batch])
        try:
            frames = _batch(vr, path, idx)
        except VideoReadError as e:  # report each frame of the failed batch, then go on
            for i in idx:
                yield SourceFrame(i, float(times[i]), None, f"decode error: {e}")
            continue
        for i, f in zip(idx, frames):
            yield SourceFrame(i, float(times[i]), f)


def read_clip_pyav(path: str | Path, num_frames: int, max_side: int = MAX_SIDE) -> Clip:
    """``read_clip`` with PyAV instead of decord: decode in order, keep the sampled frames (same indices, the same
    presentation-time rule: :func:`runtime.video_io.presentation_times`)."""
    import av

    p = Path(path)
    check_video_file(p)
    try:
        with av.open(str(p)) as container:
            stream = container.streams.video[0]
            n = int(stream.frames) or sum(1 for pk in container.demux(stream) if pk.size)
            fps = float(stream.average_rate or 0)
            width, height = int(stream.codec_context.width), int(stream.codec_context.height)
            tb = float(stream.time_base or 0)
            end = float(((stream.start_time or 0) + stream.duration) * tb) if stream.duration and tb else None
        if n <= 0 or not np.isfinite(fps) or fps <= 0:
            raise VideoReadError(f"video {p} reports {n} frames at {fps} fps; remux it: `ffmpeg -i IN -r 30 OUT.mp4`")
        notes, size = [], {}
        if max(height, width) > max_side:
            h2, w2 = scaled_size(height, width, max_side)
            size = {"width": w2, "height": h2}
            notes.append(f"video is {width}x{height}, above the {max_side} px limit per side; decoded at {w2}x{h2}: "
                         "boxes are in source pixels, masks at the decoded size")
        idx = sample_indices(n, num_frames)
        wanted: dict[int, list[int]] = {}
        for k, i in enumerate(idx):
            wanted.setdefault(int(i), []).append(k)
        out: list = [None] * len(idx)
        times: dict[int, float] = {}  # presentation times of frame 0 and the sampled frames
        with av.open(str(p)) as container:
            for i, frame in enumerate(container.decode(video=0)):
                if i in wanted or i == 0:
                    times[i] = i / fps if frame.time is None else float(frame.time)
                if i in wanted:
                    rgb = frame.to_ndarray(format="rgb24", **size)
                    for k in wanted[i]:
                        out[k] = rgb
                if i >= idx[-1]:
                    break
    except av.error.FFmpegError as e:
        raise VideoReadError(f"video {p} cannot be decoded ({first_line(e)}); fetch it again or re-encode it with "
                             "`ffmpeg -i IN -c:v libx264 -pix_fmt yuv420p OUT.mp4`") from e
    if any(f is None for f in out):
        raise VideoReadError(f"video {p} is truncated: it ended before frame {int(idx[-1])} of the {n} it reports; "
                             "fetch it again")
    keys = sorted(times)  # frame 0 first: times count from it (the rule read_clip follows)
    stamps, duration = presentation_times(keys, [times[i] for i in keys], fps, n, end=end)
    at = dict(zip(keys, stamps))
    few = few_frames_note(n, num_frames)
    return Clip(frames=np.stack(out), timestamps=np.asarray([at[int(i)] for i in idx]), duration=duration,
                width=width, height=height, fps=fps, path=str(p), notes=notes + ([few] if few else []), indices=idx,
                num_total_frames=n)
