"""Streaming: per-frame results, bad frames reported and skipped, re-ask cadence / ask_now, tracking with a
bounded memory bank, constant memory over 10,000 frames."""

import gc
import os
import tracemalloc

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def _track_forcer(pipe):
    from runtime.contract.routing import force_token

    return force_token(pipe.manifest.task_tokens["<track_begin>"].id, 0)


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_bad_frames_are_reported_and_skipped(pipe):
    rng = np.random.default_rng(0)
    good = [rng.integers(0, 256, (24, 32, 3), dtype=np.uint8) for _ in range(6)]

    def source():
        yield good[0]
        yield None
        yield good[1]
        yield np.zeros((24, 32), np.uint8)  # wrong shape
        yield good[2].astype(np.float32)  # wrong dtype
        yield np.zeros((30, 32, 3), np.uint8)  # differs from the stream's size
        yield "not a frame"
        yield from good[3:]

    results = list(pipe.stream(source(), "What is it?", cadence=3, window=4, max_new_tokens=3))
    assert [r.index for r in results] == list(range(10))
    errors = {r.index: r.error for r in results if r.error}
    assert sorted(errors) == [1, 3, 4, 5, 6]
    assert "None" in errors[1] and "shape" in errors[3] and "uint8" in errors[4] and "differs" in errors[5]
    assert all(r.latency_ms >= 0 for r in results)
    asked = [r.index for r in results if r.answer is not None]
    assert asked == [0, 8]  # good frames 0, 3 (index 8): cadence counts good frames
    assert all("error" not in r.to_dict() for r in results if r.ok)


def test_ask_now_and_clean_end(pipe):
    frames = np.random.default_rng(1).integers(0, 256, (12, 24, 32, 3), dtype=np.uint8)
    stream = pipe.stream(iter(frames), "What is it?", cadence=0, window=8, max_new_tokens=2)
    asked = []
    for r in stream:
        if r.index == 5:
            stream.ask_now()
        if r.answer is not None:
            asked.append(r.index)
    assert asked == [0, 6]
    assert list(stream) == []  # ended: iterating again yields nothing


def test_window_clip_is_what_ask_sees(pipe):
    """A re-ask answers exactly like ``ask`` on the window's frames sampled middle-of-segment."""
    frames = np.random.default_rng(2).integers(0, 256, (20, 24, 32, 3), dtype=np.uint8)
    res = [r for r in pipe.stream(iter(frames), "When is it visible?", cadence=20, window=16, max_new_tokens=5,
                                  fps=10.0) if r.answer is not None]
    assert len(res) == 1 and res[0].index == 0
    first = res[0].answer
    assert first.token_ids == pipe.ask(frames[:1], "When is it visible?", max_new_tokens=5, fps=10.0).token_ids
    stream = pipe.stream(iter(frames), "When is it visible?", cadence=16, window=8, max_new_tokens=5, fps=10.0)
    again = [r for r in stream if r.answer is not None][-1]  # asked on good frame 16 over frames 9..16
    assert again.index == 16
    assert again.answer.token_ids == pipe.ask(frames[9:17], "When is it visible?", max_new_tokens=5,
                                              fps=10.0).token_ids


def test_tracking_matches_clip_tracking(pipe):
    """Frame-by-frame stream tracking == MaskTracker.track over the same frames with the same prompt."""
    from runtime.mask_decode import decode_masks

    frames = np.random.default_rng(3).integers(0, 256, (10, 40, 56, 3), dtype=np.uint8)
    stream = pipe.stream(iter(frames), "Track it.", cadence=0, window=4, max_new_tokens=3,
                         logits_processor=_track_forcer(pipe))
    results = list(stream)
    assert results[0].answer.tasks == ["mask"]
    assert all(r.mask is not None for r in results)
    prompt = results[0].answer.mask_prompt
    tracked = pipe.new_tracker().track(pipe.mask_pixels(frames), prompt)
    for r, fm in zip(results, tracked):
        want = decode_masks(fm.low_res_logits, (40, 56), np.asarray([fm.object_score], np.float32)).masks()[0]
        assert np.array_equal(r.mask.mask(0), want)
        assert abs(r.object_score - fm.object_score) < 1e-4
        assert r.mask.to_dict()["boxes"][0] == (list(r.box) if r.box is not None else None)
        assert {"track_ms", "mask_decode_ms"} <= set(r.timings_ms)


def test_memory_is_constant_over_10000_frames(pipe):
    """10,000 frames (small), tracked every 50th, re-asked every 2,500: traced memory and RSS flat after warm-up."""
    frame = np.random.default_rng(4).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    n = 10_000

    def source():
        for i in range(n):
            yield None if i % 997 == 0 else frame  # some dropped frames too

    stream = pipe.stream(source(), "Track it.", cadence=2500, window=16, max_new_tokens=3, track_every=50,
                         logits_processor=_track_forcer(pipe))
    tracemalloc.start()
    seen, errors, tracked, sizes = 0, 0, 0, []
    try:
        for r in stream:
            seen += 1
            errors += r.error is not None
            tracked += r.mask is not None
            if seen in (2000, 6000, n):
                gc.collect()
                sizes.append((tracemalloc.get_traced_memory()[0], _rss_mb(), stream.memory_bytes))
    finally:
        tracemalloc.stop()
    assert seen == n and errors == len(range(0, n, 997)) and tracked > 150
    (py0, rss0, bank0), (py1, rss1, bank1), (py2, rss2, bank2) = sizes
    assert bank0 == bank1 == bank2  # frame ring + memory bank: allocated once
    assert py2 - py0 < 2 * 2**20, f"traced Python memory grew by {(py2 - py0) / 2**20:.2f} MB"
    assert rss2 - rss0 < 40, f"RSS grew by {rss2 - rss0:.1f} MB"


def test_stream_from_a_video_file(pipe, sample_videos):
    results = list(pipe.stream(sample_videos[0], "What is it?", cadence=0, max_new_tokens=2, max_frames=12))
    assert len(results) == 12 and all(r.ok for r in results)
    assert results[0].answer is not None and results[1].timestamp > results[0].timestamp
