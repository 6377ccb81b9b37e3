"""Small video files the hardening tests write themselves (PyAV): variable frame rate, AV1, one frame, long."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

# presentation times (ms) of a variable-frame-rate clip: bursts at ~30 fps with gaps of 0.4 s and 0.8 s
VFR_PTS_MS = [0, 33, 67, 100, 500, 533, 567, 600, 1400, 1433, 1467, 1500, 1533, 2000, 2033, 2067]


def _frame(i: int, h: int, w: int) -> np.ndarray:
    f = np.full((h, w, 3), (i * 15) % 256, np.uint8)
    f[: h // 4, : w // 4] = (255, 0, 0)
    return f


def write_video(path: Path, n: int, fps: int = 10, size: tuple[int, int] = (48, 64), codec: str = "libx264",
                pts_ms: list[int] | None = None, fmt: str | None = None) -> Path:
    """``n`` frames of ``size`` (H, W); with ``pts_ms`` the frames get those presentation times (VFR)."""
    import av

    h, w = size
    with av.open(str(path), "w", format=fmt) as c:
        s = c.add_stream(codec, rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        if pts_ms is not None:
            s.time_base = s.codec_context.time_base = Fraction(1, 1000)
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(_frame(i, h, w), format="rgb24")
            if pts_ms is not None:
                frame.pts, frame.time_base = pts_ms[i], Fraction(1, 1000)
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return Path(path)


def write_vfr(path: Path) -> Path:
    return write_video(path, len(VFR_PTS_MS), fps=30, pts_ms=VFR_PTS_MS)


def write_av1(path: Path) -> Path:
    import av

    assert "libsvtav1" in av.codecs_available, "this PyAV build lacks libsvtav1, needed to write the AV1 test file"
    return write_video(path, 4, size=(64, 64), codec="libsvtav1")
