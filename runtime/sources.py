"""Frame sources for streaming, as iterators of :class:`~runtime.video_io.SourceFrame`: :func:`open_source`
dispatches a video file (``runtime.video_io.file_frames``, decord), a file played in a loop (:class:`LoopedFile`), a
camera (OpenCV), a network URL (PyAV) or any iterable of numpy frames.

Network streams (``rtsp://``, ``http(s)://``, ``udp://``, ...) are read with PyAV, whose read timeout tells a
**stall** (no data for ``stall_timeout_s``: the demuxer's interrupt fires) from the **end** of the stream (the
demuxer returns EOF). A stall raises :class:`~runtime.video_io.SourceError` naming the URL, the timeout and the last
frame; with ``reconnect=N`` the URL is reopened up to N times first (frame indices go on; timestamps go on from the
last frame plus one frame interval: a reconnected live stream continues, a file served over HTTP starts again).
Opening never hangs: ``timeout_s`` bounds it. Timestamps are the frames' presentation times (s, first frame at 0).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from runtime.video_io import (
    STREAM_OPEN_TIMEOUT_S,
    STREAM_STALL_TIMEOUT_S,
    SourceError,
    SourceFrame,
    file_frames,
    video_duration,
)


# --------------------------------------------------------------------------------------------------- camera
def camera_frames(index: int, timeout_s: float) -> Iterator[SourceFrame]:
    """Frames of camera ``index`` (OpenCV); timestamps from the monotonic clock. SourceError if it cannot open."""
    return _cv2_frames(_open_capture(index, timeout_s))


def _open_capture(spec: int, timeout_s: float):
    import cv2

    cap = cv2.VideoCapture(spec)
    if not cap.isOpened():
        cap.release()
        raise SourceError(f"cannot open camera {spec!r} (within {timeout_s:.0f} s); check that it exists and is not in "
                          "use, or pass a video file path")
    return cap


def _cv2_frames(cap) -> Iterator[SourceFrame]:
    import cv2

    i, t0 = 0, time.monotonic()
    try:
        while True:
            ok, bgr = cap.read()
            if not ok:
                return
            ts = time.monotonic() - t0
            yield SourceFrame(i, ts, None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB),
                              None if bgr is not None else "camera returned no image")
            i += 1
    finally:
        cap.release()


# ------------------------------------------------------------------------------------------------------ URL
def _open_url(url: str, timeout_s: float, stall_timeout_s: float):
    """(container, video stream) of ``url``; SourceError when it cannot be opened or holds no video."""
    try:
        import av
    except ImportError as e:
        raise SourceError(f"streaming from {url} needs PyAV: `pip install av`") from e
    try:
        container = av.open(url, timeout=(float(timeout_s), float(stall_timeout_s)))
    except (av.FFmpegError, OSError) as e:
        raise SourceError(f"cannot open stream {url!r} (within {timeout_s:.0f} s: {e}); check that it is reachable "
                          "(URL, credentials, network), or pass a video file path") from e
    if not container.streams.video:
        container.close()
        raise SourceError(f"stream {url!r} holds no video track; pass a video stream")
    return container, container.streams.video[0]


def url_frames(url: str, timeout_s: float, stall_timeout_s: float, reconnect: int = 0) -> Iterator[SourceFrame]:
    """Open ``url`` now (SourceError at once if it cannot be) and return its frame generator (see the module
    docstring for stalls and ``reconnect``)."""
    if not isinstance(reconnect, int) or reconnect < 0:
        raise ValueError(f"reconnect must be an int >= 0, got {reconnect!r}")
    if not stall_timeout_s > 0:
        raise ValueError(f"stall_timeout must be > 0 seconds, got {stall_timeout_s!r}")
    opened = _open_url(url, timeout_s, stall_timeout_s)
    return _url_frames(url, opened, timeout_s, stall_timeout_s, reconnect)


def _url_frames(url, opened, timeout_s: float, stall_timeout_s: float, reconnect: int) -> Iterator[SourceFrame]:
    import av

    stall_errors = (av.error.ExitError, av.error.TimeoutError)  # the interrupt callback / a socket timeout
    index, attempts, offset, last_ts = 0, 0, 0.0, None
    while True:
        container, stream = opened
        rate = float(stream.average_rate or stream.guessed_rate or 30.0)
        first = None
        try:
            for packet in container.demux(stream):
                try:
                    frames = packet.decode()
                except av.error.InvalidDataError as e:  # one broken packet: a bad frame, the stream goes on
                    yield SourceFrame(index, last_ts or 0.0, None, f"decode error: {e}")
                    index += 1
                    continue
                for frame in frames:
                    t = frame.time if frame.time is not None else index / rate
                    first = t if first is None else first
                    last_ts = offset + (t - first)
                    yield SourceFrame(index, last_ts, frame.to_ndarray(format="rgb24"))
                    index += 1
            return  # EOF: the stream ended
        except stall_errors:
            pass
        finally:
            container.close()
        if attempts >= reconnect:
            tried = f" (after {attempts} reconnect(s))" if attempts else ""
            raise SourceError(f"stream {url} stalled: no data for {stall_timeout_s:g} s after frame {index - 1}"
                              f"{tried}; check the source and the network, raise --stall-timeout, or pass "
                              "--reconnect N to reopen it")
        attempts += 1
        offset = (last_ts or 0.0) + 1.0 / rate
        opened = _open_url(url, timeout_s, stall_timeout_s)


# ---------------------------------------------------------------------------------------------- dispatch
class LoopedFile:
    """A video file played ``loops`` times in a row (0: forever) as one stream source (soak tests, demos): each pass
    reopens the file; frame indices and timestamps keep counting across passes. The file is checked at once."""

    def __init__(self, path: str | Path, loops: int):
        if not isinstance(loops, int) or loops < 0:
            raise ValueError(f"loops must be an int >= 0 (0: forever), got {loops!r}")
        self.path, self.loops = Path(path), loops
        self.duration = video_duration(self.path)

    def __iter__(self) -> Iterator[SourceFrame]:
        index, offset, done = 0, 0.0, 0
        while self.loops == 0 or done < self.loops:
            for sf in file_frames(self.path):
                yield SourceFrame(index, offset + sf.timestamp, sf.frame, sf.error)
                index += 1
            offset += self.duration
            done += 1


def looped_file(source: str, loops: int) -> LoopedFile:
    """``tpo stream --loop``: a video file source played ``loops`` times (0: forever)."""
    s = str(source)
    if s.isdigit() or "://" in s:
        raise ValueError(f"--loop replays a video file; {s!r} is a camera or a URL (leave --loop at 1)")
    return LoopedFile(s, loops)


def open_source(source: Any, fps: float = 30.0, timeout_s: float = STREAM_OPEN_TIMEOUT_S,
                stall_timeout_s: float = STREAM_STALL_TIMEOUT_S, reconnect: int = 0) -> Iterator[SourceFrame]:
    """A frame source -> iterator of :class:`SourceFrame` (see the module docstring).

    ``source``: a path (str/Path to a file), a camera index (int or a digit string), a URL
    (``rtsp://``, ``http(s)://``, ...), or an iterable of frames (numpy ``[H, W, 3]`` uint8; ``None`` or
    anything else is passed on and reported as a bad frame by the stream). ``fps`` times iterable frames.
    URLs: ``timeout_s`` to open, ``stall_timeout_s`` without data mid-stream -> :class:`SourceError` (after
    ``reconnect`` attempts to reopen the URL).
    """
    if isinstance(source, (str, Path)):
        s = str(source)
        if s.isdigit():
            return camera_frames(int(s), timeout_s)
        if "://" in s:
            return url_frames(s, timeout_s, stall_timeout_s, reconnect)
        return file_frames(Path(s))
    if isinstance(source, int) and not isinstance(source, bool):
        return camera_frames(source, timeout_s)
    if isinstance(source, LoopedFile):
        return iter(source)
    if isinstance(source, np.ndarray) and source.ndim == 4:
        source = iter(source)
    if isinstance(source, Iterable) and not isinstance(source, (bytes, np.ndarray)):
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
