"""Device clip reader (``runtime/video_gpu.py``): NVDEC on the GPU, decord / PyAV fallback, and the device chain.

Videos are real files encoded with PyAV (libx264 when the wheel has it, small GOP so that seeking is exercised).
Each frame carries its index in a flat patch (gray level ``16 + 7 * i``), pure red / green / blue bars and smooth
gradients, so a wrong frame, a swapped channel or a wrong layout shows. NVDEC converts YUV to RGB with its own
kernel, so its pixels are compared with decord's within a few levels, and the index patches exactly. The files
are tagged BT.601 so that both decoders use one colour matrix.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from runtime.video_io import VideoReadError, read_clip

N_FRAMES = 30  # gray codes 16 .. 219, 7 levels apart


def make_frame(i: int, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    f = np.empty((h, w, 3), np.uint8)
    f[..., 0] = (xx * 255 // max(w - 1, 1)).astype(np.uint8)
    f[..., 1] = (yy * 255 // max(h - 1, 1)).astype(np.uint8)
    f[..., 2] = ((xx + yy + 8 * i) % 256).astype(np.uint8)
    bh, bw = h // 6, w // 8
    f[:bh, :bw] = 16 + 7 * i  # index patch
    for k, color in enumerate(((230, 20, 20), (20, 230, 20), (20, 20, 230))):  # R, G, B bars
        f[bh * (k + 2):bh * (k + 3), :bw] = color
    return f


def write_video(path: Path, n: int, h: int, w: int, fps: int = 30, gop: int = 8) -> Path:
    import av

    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.thread_count = 1
        if codec == "libx264":
            # tagged BT.601 (what PyAV's RGB->YUV conversion uses): for untagged files the Video Codec SDK's
            # conversion defaults to BT.709 and ffmpeg to BT.601 (7 levels apart on average on these frames)
            stream.options = {"crf": "12", "preset": "veryfast", "g": str(gop), "keyint_min": str(gop),
                              "x264-params": "colormatrix=smpte170m:colorprim=smpte170m:transfer=smpte170m"}
        else:
            stream.bit_rate, stream.gop_size = 8_000_000, gop
        for i in range(n):
            for packet in stream.encode(av.VideoFrame.from_ndarray(make_frame(i, h, w), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def decoded_codes(frames_thwc: np.ndarray) -> np.ndarray:
    """The frame index each frame's patch encodes (nearest gray code)."""
    h, w = frames_thwc.shape[1:3]
    patch = frames_thwc[:, h // 24:h // 8, w // 32:w // 10].reshape(len(frames_thwc), -1).mean(1)
    return np.rint((patch - 16) / 7).astype(int)


@pytest.fixture(scope="module")
def small_video(tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("vid") / "small.mp4", N_FRAMES, 120, 160)


# --------------------------------------------------------------------------------------------- CPU
def test_cpu_decoders_match_read_clip(small_video):
    from runtime.video_gpu import read_clip_cuda

    ref = read_clip(small_video, 8)
    np.testing.assert_array_equal(decoded_codes(ref.frames), (np.arange(8) + 0.5) * N_FRAMES // 8)
    for decoder in ("auto", "decord", "pyav"):
        for layout in ("thwc", "tchw"):
            c = read_clip_cuda(small_video, 8, device="cpu", decoder=decoder, layout=layout)
            assert c.decoder == ("decord" if decoder == "auto" else decoder) and c.layout == layout
            frames = c.frames.numpy() if layout == "thwc" else c.frames.permute(0, 2, 3, 1).numpy()
            np.testing.assert_array_equal(decoded_codes(frames), decoded_codes(ref.frames))
            assert np.abs(frames.astype(int) - ref.frames).mean() < 0.5  # same ffmpeg conversion (PyAV / decord)
            np.testing.assert_array_equal(c.indices, (np.arange(8) + 0.5) * N_FRAMES // 8)
            np.testing.assert_array_equal(c.timestamps, ref.timestamps)
            assert (c.width, c.height, c.fps, c.duration) == (ref.width, ref.height, ref.fps, ref.duration)
            back = c.to_clip()
            assert back.frames.shape == ref.frames.shape and back.frames.dtype == np.uint8


def test_pyav_repeats_frames_when_more_are_asked(small_video):
    from runtime.video_io import read_clip_pyav

    clip = read_clip_pyav(small_video, 2 * N_FRAMES)
    np.testing.assert_array_equal(decoded_codes(clip.frames), np.arange(2 * N_FRAMES) // 2)


@pytest.mark.parametrize(("kwargs", "err", "match"), [
    ({"path": "missing.mp4"}, VideoReadError, "does not exist"),
    ({"num_frames": 0}, ValueError, "num_frames > 0"),
    ({"decoder": "ffmpeg"}, ValueError, "decoder"),
    ({"strategy": "random"}, ValueError, "strategy"),
    ({"layout": "hwc"}, ValueError, "layout"),
    ({"decoder": "nvdec"}, ValueError, "device='cuda'"),
])
def test_bad_arguments(small_video, kwargs, err, match):
    from runtime.video_gpu import read_clip_cuda

    args = {"path": small_video, "num_frames": 8, "device": "cpu", **kwargs}
    with pytest.raises(err, match=match):
        read_clip_cuda(args.pop("path"), args.pop("num_frames"), **args)


def test_truncated_and_image_files(tmp_path, small_video):
    from runtime.video_gpu import read_clip_cuda
    from runtime.video_io import read_clip_pyav

    cut = tmp_path / "cut.mp4"
    cut.write_bytes(small_video.read_bytes()[: small_video.stat().st_size // 2])
    png = tmp_path / "x.mp4"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    for fn in (lambda p: read_clip_cuda(p, 8, device="cpu"), lambda p: read_clip_pyav(p, 8)):
        with pytest.raises(VideoReadError, match="truncated"):
            fn(cut)
        with pytest.raises(VideoReadError, match="PNG image"):
            fn(png)


def test_gop_cost_model():
    from runtime.video_gpu import _gop_cost, _key_at_or_before

    assert _key_at_or_before([0, 10, 20], 15) == 10 and _key_at_or_before([0, 10, 20], 20) == 20
    assert _gop_cost([5, 15, 25, 35], [0, 10, 20, 30]) == 24  # a seek per GOP: 6 frames each
    assert _gop_cost([5, 15, 25, 35], [0]) == 36  # one GOP: decode forward from 0
    assert _gop_cost([5, 6, 7], [0, 6]) == 8  # keyframe right after the last frame: forward, no seek
    assert _gop_cost([3, 9], []) == 2  # keyframes unknown: one frame per seek


# --------------------------------------------------------------------------------------------- GPU
@pytest.fixture(scope="module")
def hd_video(tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("vid") / "hd.mp4", N_FRAMES, 1080, 1920, gop=8)


@pytest.mark.gpu
@pytest.mark.nvdec
@pytest.mark.parametrize("num_frames", [8, 2 * N_FRAMES])
def test_nvdec_matches_decord(hd_video, num_frames):
    """Every strategy and layout: NVDEC frames = decord's frames (index patches exactly, pixels within a few levels)."""
    import torch

    from runtime.video_gpu import nvdec_available, read_clip_cuda

    ok, why = nvdec_available()
    assert ok, why
    ref = read_clip(hd_video, num_frames)
    first = None
    for strategy in ("auto", "sequential", "index", "gop"):
        for layout in ("thwc", "tchw"):
            c = read_clip_cuda(hd_video, num_frames, device="cuda", decoder="nvdec", strategy=strategy,
                               layout=layout)
            assert c.decoder == "nvdec" and c.notes == [], c.notes
            assert c.frames.is_cuda and c.frames.dtype == torch.uint8
            frames = c.frames if layout == "thwc" else c.frames.permute(0, 2, 3, 1)
            got = frames.cpu().numpy()
            assert got.shape == ref.frames.shape
            np.testing.assert_array_equal(decoded_codes(got), decoded_codes(ref.frames))
            np.testing.assert_array_equal(c.timestamps, ref.timestamps)
            assert (c.width, c.height, c.duration) == (ref.width, ref.height, ref.duration)
            assert abs(c.fps - ref.fps) < 1e-6
            diff = np.abs(got.astype(int) - ref.frames)
            assert diff.mean() < 3.0, f"{strategy}/{layout}: mean |NVDEC - decord| {diff.mean():.2f} levels"
            bars = got[:, 180 * 2 + 90, 100]  # the middle row of the red bar (bar height 180 px at 1080p)
            assert (bars[:, 0] > 180).all() and (bars[:, 1:] < 70).all(), f"channel order: {bars[0]}"
            if first is None:
                first = got
            else:  # one decoder, one conversion: every access pattern gives the same bytes
                np.testing.assert_array_equal(got, first, err_msg=f"{strategy}/{layout}")


@pytest.mark.gpu
@pytest.mark.nvdec
def test_nvdec_then_device_preprocess_matches_cpu_chain(hd_video):
    """read_clip_cuda -> fused kernels vs read_clip -> numpy: apart only by NVDEC's colour conversion."""
    import torch

    from runtime.kernels.preprocess_triton import DevicePreprocessor
    from runtime.preprocess import Preprocessor
    from runtime.video_gpu import read_clip_cuda

    pp = Preprocessor(size=224, mask_size=1024)
    ref = read_clip(hd_video, 8)
    for layout in ("thwc", "tchw"):
        c = read_clip_cuda(hd_video, 8, device="cuda", decoder="nvdec", layout=layout)
        dev = DevicePreprocessor(pp, layout=layout)
        v, m = dev.vision(c.frames), dev.mask(c.frames)
        assert v.shape == (1, 8, 3, 224, 224) and m.shape == (8, 3, 1024, 1024) and v.dtype == torch.float32
        # exact against numpy on the same (NVDEC) frames; a few levels against the CPU decoder's frames
        host = c.to_clip().frames
        assert torch.equal(v.cpu(), torch.from_numpy(pp.vision(host)))
        assert (v.cpu() - torch.from_numpy(pp.vision(ref.frames))).abs().mean().item() < 3.0
        assert (m.cpu() - torch.from_numpy(pp.mask(ref.frames))).abs().mean().item() < 3.0


@pytest.mark.gpu
def test_cpu_decoder_on_cuda_reports_itself(small_video):
    from runtime.video_gpu import read_clip_cuda

    c = read_clip_cuda(small_video, 8, device="cuda", decoder="decord")
    assert c.decoder == "decord" and c.frames.is_cuda and c.timings_ms["upload"] > 0
    np.testing.assert_array_equal(c.frames.cpu().numpy(), read_clip(small_video, 8).frames)
