"""Annotated videos: the source video frame by frame, with masks, boxes, absence labels and the best time span on a
timeline bar, written as MP4 (PyAV). Used by ``tpo run --out`` (``runtime.report.write_outputs``).

Memory is bounded whatever the video's length: the source is decoded in order with PyAV (one decoded frame at a
time; decord's batch reader grew with the clip length at 4K), each frame is annotated and encoded at once, and the
H.264 encoder runs with ``tune=zerolatency`` (no lookahead queue: x264's default lookahead holds ~40 frames, 0.6
GB at 1440p). Peak memory = the sampled clip + one source frame + one output frame + the encoder's reference frames.
Every frame of the video is written (``max_frames`` to stop earlier, said on the returned count). Output frames
keep the source's presentation times (a variable-frame-rate video stays in sync).
"""

from __future__ import annotations

from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np

from runtime.video_io import Clip, VideoReadError

TIME_BASE = Fraction(1, 1000)  # output pts in ms


def _codec() -> str:
    import av

    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def mask_label(mask, k: int) -> str:
    """``"not found"`` when the mask head reports the object absent on sampled frame ``k`` (object score <= 0),
    else ``""`` (also without masks)."""
    if mask is None or not 0 <= k < mask.num_frames:
        return ""
    return "" if bool(mask.present[k]) else "not found"


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
    """Write uint8 RGB frames ``[H, W, 3]`` to an MP4 (H.264 ``tune=zerolatency`` when the av wheel has it, else
    MPEG-4 Part 2), each at its time ``t`` (s; default: frame count / fps).

    Odd sizes are padded by one pixel (yuv420p needs even sizes). Use as a context manager.
    """

    def __init__(self, path: str | Path, fps: float, width: int, height: int):
        import av

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.width, self.height = width + width % 2, height + height % 2
        self.fps = max(1.0, float(fps))
        self.container = av.open(str(self.path), "w")
        codec = _codec()
        self.stream = self.container.add_stream(codec, rate=Fraction(max(1, round(self.fps))))
        self.stream.width, self.stream.height, self.stream.pix_fmt = self.width, self.height, "yuv420p"
        self.stream.time_base = self.stream.codec_context.time_base = TIME_BASE
        if codec == "mpeg4":
            self.stream.bit_rate = 4_000_000
        else:
            self.stream.codec_context.options = {"tune": "zerolatency", "preset": "veryfast"}
        self.frames = 0
        self._last_pts = -1

    def write(self, frame: np.ndarray, t: float | None = None) -> None:
        import av

        if frame.shape[:2] != (self.height, self.width):
            pad = np.zeros((self.height, self.width, 3), np.uint8)
            pad[:frame.shape[0], :frame.shape[1]] = frame[:self.height, :self.width]
            frame = pad
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        t = self.frames / self.fps if t is None else t
        self._last_pts = max(self._last_pts + 1, int(round(t / TIME_BASE)))  # strictly increasing
        vf.pts, vf.time_base = self._last_pts, TIME_BASE
        for packet in self.stream.encode(vf):
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


def _decode_in_order(video: str | Path) -> Iterator[tuple[float, np.ndarray]]:
    """(time s from the first frame, uint8 RGB ``[H, W, 3]``) of every frame, decoded in order (PyAV)."""
    import av

    try:
        with av.open(str(video)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            first = None
            for i, frame in enumerate(container.decode(stream)):
                t = frame.time if frame.time is not None else i / float(stream.average_rate or 30)
                first = t if first is None else first
                yield t - first, frame.to_ndarray(format="rgb24")
    except (av.FFmpegError, IndexError) as e:
        raise VideoReadError(f"video {video} could not be decoded for the annotated output ({e}); the answers above "
                             "are unaffected") from e


def write_annotated(path: str | Path, video: str | Path | None, clip: Clip, results: list, labels: list[str],
                    max_frames: int | None = None) -> tuple[Path, int]:
    """Annotated MP4 of a clip's source video (or of its sampled frames when ``video`` is None) -> (path, frames
    written). Streams: see the module docstring.

    ``results``: runtime ``TPOResult`` objects; each frame shows the masks of the nearest sampled frame (masks
    exist on sampled frames only) or "not found" where the mask head reports the object absent there, every region
    box, and the best temporal span on the timeline bar.
    """
    masks = next((r.mask for r in results if r.mask is not None), None)
    box = next((r.region.box for r in results if r.region is not None), None)
    span = next(((r.temporal.best.start, r.temporal.best.end) for r in results
                 if r.temporal is not None and r.temporal.best is not None), None)
    text = " | ".join(labels)
    if video is not None:
        frames = _decode_in_order(video)
        fps = clip.fps or 30.0
    else:
        frames = ((float(t), f) for t, f in zip(clip.timestamps, clip.frames))
        fps = 2.0
    stamps = np.asarray(clip.timestamps, np.float64)
    size = clip.frames.shape[1:3]
    with AnnotatedWriter(path, fps, size[1], size[0]) as writer:
        for t, f in frames:
            if max_frames is not None and writer.frames >= max_frames:
                break
            if f.shape[:2] != size:
                import cv2

                f = cv2.resize(f, (size[1], size[0]), interpolation=cv2.INTER_AREA)
            m, label = None, ""
            if masks is not None:
                k = int(np.argmin(np.abs(stamps - t)))
                m = masks.mask(k) if masks.height == f.shape[0] and masks.width == f.shape[1] else None
                label = mask_label(masks, k)
            sx, sy = f.shape[1] / max(clip.width, 1), f.shape[0] / max(clip.height, 1)
            b = None if box is None else (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
            writer.write(annotate(f, t, clip.duration, m, b, span, f"{text} | {label}" if label else text), t)
        written = writer.frames
    return Path(path), written
