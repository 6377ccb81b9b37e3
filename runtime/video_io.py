"""Video sources and the annotated MP4 writer (no torch, no tpo_core).

- :func:`read_clip`: a video file -> :class:`Clip` of ``num_frames`` middle-of-segment frames (decord), with the
  same checks and errors as the reference reader (missing, empty, an image, truncated MP4, undecodable).
- :func:`open_source`: a frame source for streaming -> iterator of :class:`SourceFrame`: a video file (decord,
  decoded in small batches), a camera index or an RTSP/HTTP URL (OpenCV, else PyAV), or any iterable of numpy
  frames. Per-frame decode failures are yielded as frames with ``error`` set, never raised; a source that cannot
  be opened raises :class:`SourceError` at once (with a timeout for network streams: no hang).
- :class:`AnnotatedWriter`: RGB frames + masks / boxes / a time span on a timeline bar -> MP4 (PyAV).

Resolution policy (documented in docs/runtime.md): frames whose longer side exceeds ``MAX_SIDE`` (8192, i.e.
beyond 8K UHD 7680x4320) are decoded downscaled to that longer side (aspect kept) and the result carries a
note; boxes are still reported in the source's pixels; masks are at the decoded resolution.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runtime.preprocess import sample_indices

MAX_SIDE = 8192
STREAM_OPEN_TIMEOUT_S = 10.0
_IMAGE_MAGIC = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"GIF87a": "GIF", b"GIF89a": "GIF",
                b"BM": "BMP", b"II*\x00": "TIFF", b"MM\x00*": "TIFF"}
_FIX = "re-encode it, e.g. `ffmpeg -i IN -c:v libx264 -pix_fmt yuv420p OUT.mp4`"
# codecs decord's bundled FFmpeg decodes (the ones tested: H.264, HEVC, MPEG-4 Part 2, VP8/9, MJPEG, ...)
DECORD_CODECS = ("h264", "hevc", "mpeg4", "vp8", "vp9", "mjpeg", "mpeg2video", "mpeg1video", "msmpeg4v3", "h263",
                 "theora", "rawvideo", "prores", "ffv1")


class VideoReadError(ValueError):
    """A video could not be read; the message names the file, the problem and the fix."""


class SourceError(ValueError):
    """A streaming source could not be opened."""


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


def _decord_open(path: Path, width: int = -1, height: int = -1):
    import decord

    decord.logging.set_level(decord.logging.QUIET)
    try:
        vr = decord.VideoReader(str(path), ctx=decord.cpu(0), width=width, height=height, num_threads=1)
    except (decord.DECORDError, RuntimeError) as e:
        raise diagnose(path, e) from e
    if len(vr) == 0:
        raise VideoReadError(f"video {path} has zero frames; it is empty or broken: fetch it again")
    return vr


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def _codec_name(path: Path) -> str | None:
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
    detail = _first_line(err)
    codec = _codec_name(path)
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


def read_clip(path: str | Path, num_frames: int, max_side: int = MAX_SIDE) -> Clip:
    """Read ``num_frames`` middle-of-segment frames (the reference's rule) of a video file."""
    p = Path(path)
    vr, fps = open_video(p)
    height, width = (int(v) for v in _batch(vr, p, [0]).shape[1:3])
    notes = []
    if max(height, width) > max_side:
        h2, w2 = scaled_size(height, width, max_side)
        notes.append(f"video is {width}x{height}, above the {max_side} px limit per side; decoded at {w2}x{h2}: "
                     "boxes are in source pixels, masks at the decoded size")
        vr = _decord_open(p, width=w2, height=h2)
    n = len(vr)
    idx = sample_indices(n, num_frames)
    frames = np.ascontiguousarray(_batch(vr, p, idx), dtype=np.uint8)
    return Clip(frames=frames, timestamps=idx / fps, duration=n / fps, width=width, height=height, fps=fps,
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
    return Clip(frames=np.ascontiguousarray(x[idx]), timestamps=idx / float(fps), duration=x.shape[0] / float(fps),
                width=int(x.shape[2]), height=int(x.shape[1]), fps=float(fps), indices=idx,
                num_total_frames=int(x.shape[0]))


# ------------------------------------------------------------------------------------------------ streaming
@dataclass
class SourceFrame:
    """One frame of a source: ``frame`` uint8 RGB ``[H, W, 3]`` or None with ``error`` set."""

    index: int
    timestamp: float
    frame: np.ndarray | None
    error: str | None = None


def open_video(path: str | Path):
    """A video file -> (decord VideoReader, fps); every failure is a VideoReadError naming the fix."""
    p = Path(path)
    check_video_file(p)
    vr = _decord_open(p)
    fps = float(vr.get_avg_fps())
    if not np.isfinite(fps) or fps <= 0:
        raise VideoReadError(f"video {p} reports fps={fps}; remux it with a frame rate: `ffmpeg -i IN -r 30 OUT.mp4`")
    return vr, fps


def decode_frames(vr, path: Path, indices) -> np.ndarray:
    """uint8 RGB ``[len(indices), H, W, 3]`` of an opened reader; VideoReadError when decoding fails."""
    return _batch(vr, path, indices)


def file_frames(path: Path, batch: int = 8, stride: int = 1) -> Iterator[SourceFrame]:
    """Open (errors raise here, at once) and return the frame generator."""
    vr, fps = open_video(path)
    return _decode_batches(vr, Path(path), fps, batch, stride)


def _decode_batches(vr, path: Path, fps: float, batch: int, stride: int = 1) -> Iterator[SourceFrame]:
    wanted = range(0, len(vr), stride)
    for start in range(0, len(wanted), batch):
        idx = list(wanted[start:start + batch])
        try:
            frames = _batch(vr, path, idx)
        except VideoReadError as e:  # report each frame of the failed batch, then go on
            for i in idx:
                yield SourceFrame(i, i / fps, None, f"decode error: {e}")
            continue
        for i, f in zip(idx, frames):
            yield SourceFrame(i, i / fps, f)


def _cv2_frames(cap, fps: float) -> Iterator[SourceFrame]:
    import cv2

    i, t0 = 0, time.monotonic()
    try:
        while True:
            ok, bgr = cap.read()
            if not ok:
                return
            ts = i / fps if fps > 0 else time.monotonic() - t0
            yield SourceFrame(i, ts, None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB),
                              None if bgr is not None else "camera returned no image")
            i += 1
    finally:
        cap.release()


def _open_capture(spec: str | int, timeout_s: float):
    """OpenCV capture for a camera index or URL, with open/read timeouts (no hang on unreachable hosts)."""
    import cv2

    params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(timeout_s * 1000), cv2.CAP_PROP_READ_TIMEOUT_MSEC,
              int(timeout_s * 1000)]
    cap = cv2.VideoCapture(spec, cv2.CAP_ANY, params) if isinstance(spec, str) else cv2.VideoCapture(spec)
    if not cap.isOpened():
        cap.release()
        kind = "camera" if isinstance(spec, int) else "stream"
        raise SourceError(f"cannot open {kind} {spec!r} (within {timeout_s:.0f} s); check that it exists / is "
                          "reachable (URL, credentials, network), or pass a video file path")
    return cap


def open_source(source: Any, fps: float = 30.0, timeout_s: float = STREAM_OPEN_TIMEOUT_S) -> Iterator[SourceFrame]:
    """A frame source -> iterator of :class:`SourceFrame` (see the module docstring).

    ``source``: a path (str/Path to a file), a camera index (int or a digit string), a URL
    (``rtsp://``, ``http(s)://``, ...), or an iterable of frames (numpy ``[H, W, 3]`` uint8; ``None`` or
    anything else is passed on and reported as a bad frame by the stream). ``fps`` times iterable frames.
    """
    if isinstance(source, (str, Path)):
        s = str(source)
        if s.isdigit():
            return _cv2_frames(_open_capture(int(s), timeout_s), fps=0.0)
        if "://" in s:
            cap = _open_capture(s, timeout_s)
            import cv2

            return _cv2_frames(cap, float(cap.get(cv2.CAP_PROP_FPS) or 0.0))
        return file_frames(Path(s))
    if isinstance(source, int):
        return _cv2_frames(_open_capture(source, timeout_s), fps=0.0)
    if isinstance(source, np.ndarray) and source.ndim == 4:
        source = iter(source)
    if isinstance(source, Iterable):
        return _iter_frames(source, fps)
    raise SourceError(f"cannot stream from a {type(source).__name__}; pass a file path, a camera index, a URL or an "
                      "iterable of uint8 [H, W, 3] frames")


def _iter_frames(frames: Iterable, fps: float) -> Iterator[SourceFrame]:
    it = iter(frames)
    i = 0
    while True:
        try:
            f = next(it)
        except StopIteration:
            return
        except Exception as e:  # noqa: BLE001 -- a user iterator may raise anything on one frame; report it
            yield SourceFrame(i, i / fps, None, f"source raised {type(e).__name__}: {e}")
            i += 1
            continue
        yield SourceFrame(i, i / fps, f)
        i += 1


# --------------------------------------------------------------------------------------------- writing
def _codec() -> str:
    import av

    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def annotate(frame: np.ndarray, t: float, duration: float, mask: np.ndarray | None = None,
             box: tuple[float, float, float, float] | None = None, span: tuple[float, float] | None = None,
             text: str = "", color=(255, 64, 64)) -> np.ndarray:
    """Draw on a copy of ``frame`` (uint8 ``[H, W, 3]`` RGB): mask overlay (bool ``[H, W]``), box (pixels), and a
    timeline bar (``span`` in seconds, green; cursor at ``t``) with ``text`` above it."""
    import cv2

    out = frame.copy()
    h, w = out.shape[:2]
    if mask is not None and mask.shape == (h, w) and mask.any():
        tint = np.array(color, np.float32)
        out[mask] = (0.5 * out[mask].astype(np.float32) + 0.5 * tint).astype(np.uint8)
    if box is not None:
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        cv2.rectangle(out, (x0, y0), (x1, y1), (255, 255, 0), max(1, w // 320))
    bar_h = max(4, h // 40)
    y = h - bar_h
    out[y:, :] = (out[y:, :].astype(np.float32) * 0.3 + 40).astype(np.uint8)
    if span is not None and duration > 0:
        a, b = (int(round(w * min(max(v / duration, 0.0), 1.0))) for v in span)
        out[y:, a:max(b, a + 1)] = (64, 200, 64)
    if duration > 0:
        cx = min(w - 1, int(round(w * t / duration)))
        out[y:, max(0, cx - 1):cx + 1] = 255
    if text:
        scale = max(0.3, w / 1000)
        cv2.putText(out, text[:80], (4, max(12, y - 6)), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255),
                    1, cv2.LINE_AA)
    return out


class AnnotatedWriter:
    """Write uint8 RGB frames ``[H, W, 3]`` to an MP4 (H.264 when the av wheel has it, else MPEG-4 Part 2).

    Odd sizes are padded by one pixel (yuv420p needs even sizes). Use as a context manager.
    """

    def __init__(self, path: str | Path, fps: float, width: int, height: int):
        from fractions import Fraction

        import av

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.width, self.height = width + width % 2, height + height % 2
        self.container = av.open(str(self.path), "w")
        codec = _codec()
        self.stream = self.container.add_stream(codec, rate=Fraction(max(1, round(fps))))
        self.stream.width, self.stream.height, self.stream.pix_fmt = self.width, self.height, "yuv420p"
        if codec == "mpeg4":
            self.stream.bit_rate = 4_000_000
        self.frames = 0

    def write(self, frame: np.ndarray) -> None:
        import av

        if frame.shape[:2] != (self.height, self.width):
            pad = np.zeros((self.height, self.width, 3), np.uint8)
            pad[:frame.shape[0], :frame.shape[1]] = frame[:self.height, :self.width]
            frame = pad
        for packet in self.stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
            self.container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        if self.container is None:
            return
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()
        self.container = None

    def __enter__(self) -> AnnotatedWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_annotated(path: str | Path, video: str | Path | None, clip: Clip, results: list, labels: list[str],
                    max_frames: int = 900) -> Path:
    """Annotated MP4 of a clip's source video (or of its sampled frames when ``video`` is None).

    ``results``: runtime ``TPOResult`` objects; each frame shows the masks of the nearest sampled frame (masks
    exist on sampled frames only), every region box, and the best temporal span on the timeline bar.
    """
    masks = next((r.mask for r in results if r.mask is not None), None)
    box = next((r.region.box for r in results if r.region is not None), None)
    span = next(((r.temporal.best.start, r.temporal.best.end) for r in results
                 if r.temporal is not None and r.temporal.best is not None), None)
    text = " | ".join(labels)
    if video is not None:
        frames = (sf for sf in open_source(video) if sf.frame is not None)
        fps = clip.fps or 30.0
    else:
        frames = (SourceFrame(i, float(t), f) for i, (t, f) in enumerate(zip(clip.timestamps, clip.frames)))
        fps = 2.0
    stamps = np.asarray(clip.timestamps, np.float64)
    with AnnotatedWriter(path, fps, clip.frames.shape[2], clip.frames.shape[1]) as writer:
        for sf in frames:
            if writer.frames >= max_frames:
                break
            f = sf.frame
            if f.shape[:2] != clip.frames.shape[1:3]:
                import cv2

                f = cv2.resize(f, (clip.frames.shape[2], clip.frames.shape[1]), interpolation=cv2.INTER_AREA)
            m = None
            if masks is not None:
                k = int(np.argmin(np.abs(stamps - sf.timestamp)))
                m = masks.mask(k) if masks.height == f.shape[0] and masks.width == f.shape[1] else None
            sx = f.shape[1] / max(clip.width, 1)
            sy = f.shape[0] / max(clip.height, 1)
            b = None if box is None else (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
            writer.write(annotate(f, sf.timestamp, clip.duration, m, b, span, text))
    return Path(path)
