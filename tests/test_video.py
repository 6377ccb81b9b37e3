"""Video reading (decord), sampling, preprocessing and VideoReadError on bad inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tpo_core.config import IMAGENET_MEAN, IMAGENET_STD
from tpo_core.data.synth import pick_codec, write_mp4
from tpo_core.data.video import (
    VideoReadError,
    iter_frames,
    preprocess_frames,
    read_video,
    sample_indices,
    video_info,
)

N, FPS, W, H, STEP = 40, 10, 96, 64, 6  # frame i is a flat gray of level i * STEP


@pytest.fixture(scope="module")
def ramp_video(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("video") / "ramp.mp4"
    frames = (np.full((H, W, 3), i * STEP, dtype=np.uint8) for i in range(N))
    write_mp4(path, frames, FPS, W, H, pick_codec())
    return path


def _level(frames: np.ndarray) -> np.ndarray:
    return frames.reshape(len(frames), -1).mean(axis=1) / STEP


def test_sample_indices_middle_of_segment():
    assert sample_indices(40, 8).tolist() == [2, 7, 12, 17, 22, 27, 32, 37]
    assert sample_indices(10, 4).tolist() == [1, 3, 6, 8]  # int((i + 0.5) * 10 / 4)
    assert sample_indices(3, 6).tolist() == [0, 0, 1, 1, 2, 2]  # more frames asked than exist: repeats
    with pytest.raises(ValueError):
        sample_indices(0, 4)


def test_read_video_known_case(ramp_video):
    clip = read_video(ramp_video, 8)
    assert clip.frames.shape == (8, H, W, 3) and clip.frames.dtype == np.uint8
    assert (clip.num_total_frames, clip.fps, clip.height, clip.width) == (N, FPS, H, W)
    assert clip.duration == pytest.approx(N / FPS)
    assert clip.indices.tolist() == [2, 7, 12, 17, 22, 27, 32, 37]
    np.testing.assert_allclose(clip.timestamps, clip.indices / FPS)
    assert np.all(np.diff(clip.timestamps) > 0)
    # the decoded pixels are those of the sampled frames (lossy codec: +-0.5 of a gray step)
    np.testing.assert_allclose(_level(clip.frames), clip.indices, atol=0.5)
    assert video_info(ramp_video) == {"fps": FPS, "num_frames": N, "duration": N / FPS, "height": H, "width": W}


def test_read_video_max_side(ramp_video):
    clip = read_video(ramp_video, 4, max_side=48)
    assert clip.frames.shape == (4, 32, 48, 3)
    assert (clip.height, clip.width) == (H, W)  # the video's own resolution


def test_iter_frames(ramp_video):
    got = list(iter_frames(ramp_video, stride=3, batch=4))
    assert [i for i, _, _ in got] == list(range(0, N, 3))
    assert [t for _, t, _ in got] == pytest.approx([i / FPS for i in range(0, N, 3)])
    np.testing.assert_allclose(_level(np.stack([f for _, _, f in got])), range(0, N, 3), atol=0.5)


def test_preprocess_frames_matches_reference():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(3, 20, 30, 3), dtype=np.uint8)
    out = preprocess_frames(frames, 16, IMAGENET_MEAN, IMAGENET_STD)
    assert out.shape == (3, 3, 16, 16) and out.dtype == torch.float32
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    ref = F.interpolate(x, size=(16, 16), mode="bicubic", align_corners=False).clamp(0, 255) / 255
    ref = (ref - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(out, ref)
    lo = (0 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    hi = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.all(out >= lo.view(1, 3, 1, 1) - 1e-6) and torch.all(out <= hi.view(1, 3, 1, 1) + 1e-6)
    with pytest.raises(ValueError, match="uint8"):
        preprocess_frames(frames.astype(np.float32), 16, IMAGENET_MEAN, IMAGENET_STD)
    with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
        preprocess_frames(frames[..., :2], 16, IMAGENET_MEAN, IMAGENET_STD)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _png(path: Path) -> Path:
    from PIL import Image

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)
    return path


def _jpeg(path: Path) -> Path:
    from PIL import Image

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path, format="JPEG")
    return path


@pytest.mark.parametrize("case, match", [
    ("missing", "does not exist"),
    ("empty", "empty"),
    ("truncated", "truncated"),
    ("garbage", "truncated or corrupt"),
    ("png", "PNG image"),
    ("jpeg_as_mp4", "JPEG image"),
    ("directory", "not a regular file"),
])
def test_video_read_errors(tmp_path, ramp_video, case, match):
    path = {
        "missing": lambda: tmp_path / "nope.mp4",
        "empty": lambda: _write(tmp_path / "empty.mp4", b""),
        "truncated": lambda: _write(tmp_path / "t.mp4", ramp_video.read_bytes()[: ramp_video.stat().st_size // 2]),
        "garbage": lambda: _write(tmp_path / "g.mp4", np.random.default_rng(0).bytes(3000)),
        "png": lambda: _png(tmp_path / "frame.png"),
        "jpeg_as_mp4": lambda: _jpeg(tmp_path / "clip.mp4"),
        "directory": lambda: tmp_path,
    }[case]()
    with pytest.raises(VideoReadError, match=match) as info:
        read_video(path, 4)
    assert str(path) in str(info.value)  # names the file
    assert isinstance(info.value, ValueError)
    with pytest.raises(VideoReadError):
        next(iter_frames(path))


def test_truncated_faststart_and_zero_frames(tmp_path, ramp_video):
    import av

    fast = tmp_path / "fast.mp4"  # moov first: decord would open it and fail while indexing
    with av.open(str(ramp_video)) as src, av.open(str(fast), "w", options={"movflags": "faststart"}) as dst:
        out = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = out
                dst.mux(packet)
    data = fast.read_bytes()
    assert read_video(fast, 4).num_total_frames == N
    cut = tmp_path / "fast_cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.9)])
    with pytest.raises(VideoReadError, match="truncated"):
        read_video(cut, 4)
    zero = tmp_path / "zero.mp4"
    with av.open(str(zero), "w") as c:
        s = c.add_stream("mpeg4", rate=10)
        s.width, s.height, s.pix_fmt = 64, 64, "yuv420p"
        c.start_encoding()
    with pytest.raises(VideoReadError, match="zero frames|no decodable video"):
        read_video(zero, 4)


def test_unsupported_codec(tmp_path):
    import av

    # PyAV's wheels (setup.py: av>=12) bundle the SVT-AV1 encoder; decord's FFmpeg cannot decode AV1.
    assert "libsvtav1" in av.codecs_available, "this PyAV build lacks libsvtav1, needed to write the AV1 test file"
    path = tmp_path / "av1.mp4"
    write_av1 = [np.full((64, 64, 3), 40 * i, np.uint8) for i in range(4)]
    with av.open(str(path), "w") as c:
        s = c.add_stream("libsvtav1", rate=10)
        s.width, s.height, s.pix_fmt = 64, 64, "yuv420p"
        for f in write_av1:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    with pytest.raises(VideoReadError, match="codec 'av1'"):
        read_video(path, 2)


def test_without_decord_the_readers_use_pyav(ramp_video, monkeypatch):
    """No decord (aarch64: Jetson, Grace): read_clip, file_frames and a looped file read with PyAV, with the same
    sampled frames and presentation times as decord, and the clip says which decoder ran."""
    from runtime import sources, video_io

    ref = video_io.read_clip(ramp_video, 8)
    ref_stream = list(video_io.file_frames(ramp_video))
    monkeypatch.setattr(video_io, "decord_available", lambda: False)
    alt = video_io.read_clip(ramp_video, 8)
    assert video_io.PYAV_NOTE in alt.notes and video_io.PYAV_NOTE not in ref.notes
    assert alt.indices.tolist() == ref.indices.tolist() and alt.num_total_frames == ref.num_total_frames == N
    np.testing.assert_allclose(alt.timestamps, ref.timestamps, atol=1e-6)
    assert alt.duration == pytest.approx(ref.duration) and (alt.width, alt.height) == (W, H)
    np.testing.assert_allclose(_level(alt.frames), _level(ref.frames), atol=0.5)
    stream = list(video_io.file_frames(ramp_video))
    assert [f.index for f in stream] == [f.index for f in ref_stream] == list(range(N))
    np.testing.assert_allclose([f.timestamp for f in stream], [f.timestamp for f in ref_stream], atol=1e-6)
    np.testing.assert_allclose(_level(np.stack([f.frame for f in stream])), np.arange(N), atol=0.5)
    looped = list(sources.LoopedFile(ramp_video, 2))
    assert len(looped) == 2 * N and looped[N].timestamp == pytest.approx(N / FPS)
    with pytest.raises(VideoReadError, match="empty"):
        video_io.read_clip(_write(ramp_video.parent / "empty.mp4", b""), 8)
