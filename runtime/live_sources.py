"""Live frame sources for streaming: a camera (OpenCV) and a network URL (PyAV), as iterators of
:class:`~runtime.video_io.SourceFrame`. Use :func:`runtime.video_io.open_source`, which dispatches here.

Network streams (``rtsp://``, ``http(s)://``, ``udp://``, ...) are read with PyAV, whose read timeout tells a
**stall** (no data for ``stall_timeout_s``: the demuxer's interrupt fires) from the **end** of the stream (the
demuxer returns EOF). A stall raises :class:`~runtime.video_io.SourceError` naming the URL, the timeout and the last
frame; with ``reconnect=N`` the URL is reopened up to N times first (frame indices go on; timestamps go on from the
last frame plus one frame interval: a reconnected live stream continues, a file served over HTTP starts again).
Opening never hangs: ``timeout_s`` bounds it. Timestamps are the frames' presentation times (s, first frame at 0).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from runtime.video_io import SourceError, SourceFrame


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
