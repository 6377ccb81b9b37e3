"""Runtime (ONNX Runtime CPU, from the manifest only) == reference ``TPOModel.generate`` on held-out synthetic videos.

The model is ``load_model("embedded")`` (the untrained tiny model until a trained default is committed), exported
with ``export.exporter.export_model`` into a cache folder (``$TPO_EDGE_CACHE`` when set, else a session tmp dir).
Free decoding is compared token for token; since an untrained model may never emit ``*_begin``, routing is also
forced with the same ``logits_processor`` on both sides and every head's output is compared.
"""


import numpy as np
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def reference():
    from tpo_core.model import load_model

    return load_model("embedded")


@pytest.fixture(scope="session")
def tasks(synth_root):
    from tpo_core.data.synth_tasks import task_samples

    out = {}
    for s in task_samples(synth_root):
        out.setdefault(s.task, s)
    return out


def forcing(token_id: int | None, at: int = 1):
    from runtime.contract.routing import force_token

    return None if token_id is None else force_token(token_id, at)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def box_iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return 1.0 if area <= 0 and inter == 0 else inter / max(area, 1e-12)


def assert_same(ref, got):
    assert got.token_ids == ref.token_ids
    assert got.text == ref.text
    assert got.tasks == ref.tasks
    if ref.region is not None:
        assert box_iou(ref.region.box, got.region.box) >= 0.99
        assert np.allclose(ref.region.box_normalized, got.region.box_normalized, atol=1e-4)
    if ref.temporal is not None:
        assert [(s.start, s.end) for s in got.temporal.spans] == [(s.start, s.end) for s in ref.temporal.spans]
        assert np.allclose([s.score for s in got.temporal.spans], [s.score for s in ref.temporal.spans], atol=1e-4)
        assert np.allclose(got.temporal.saliency, ref.temporal.saliency, atol=1e-4)
        assert np.allclose(got.temporal.saliency_times, ref.temporal.saliency_times)
    if ref.mask is not None:
        masks = got.mask.masks
        assert masks.shape == ref.mask.masks.shape
        assert min(iou(a, b) for a, b in zip(masks, ref.mask.masks)) >= 0.99
        assert np.allclose(got.mask.object_scores, ref.mask.object_scores, atol=1e-3)
        assert np.allclose(got.mask.timestamps, ref.mask.timestamps)
    a, b = got.to_dict(), ref.to_dict()
    assert set(b) <= set(a)  # same JSON shape (the runtime adds notes / extra timings)


def test_free_decoding_matches_reference(pipe, reference, sample_videos, tasks):
    from tpo_core.data.video import read_video

    for video in sample_videos[:2]:
        clip = read_video(video, reference.config.vision.num_frames)
        for task in ("qa", "region", "temporal", "mask"):
            q = tasks[task].question
            ref = reference.generate(clip, q, max_new_tokens=12)
            got = pipe.ask(video, q, max_new_tokens=12)  # the runtime reads the file itself
            assert_same(ref, got)
            assert got.timings_ms["vision_ms"] > 0 and got.timings_ms["prefill_ms"] > 0


@pytest.mark.parametrize("head", ["region", "temporal", "mask"])
def test_forced_routing_matches_reference(pipe, reference, sample_videos, tasks, head):
    from tpo_core.data.video import read_video

    begin = {"region": "<box_begin>", "temporal": "<time_begin>", "mask": "<track_begin>"}[head]
    tid = pipe.manifest.task_tokens[begin].id
    for video in sample_videos:
        clip = read_video(video, reference.config.vision.num_frames)
        q = tasks[head].question
        ref = reference.generate(clip, q, max_new_tokens=8, logits_processor=forcing(tid))
        got = pipe.ask(video, q, max_new_tokens=8, logits_processor=forcing(tid))
        assert head in ref.tasks
        assert_same(ref, got)
        assert f"head_{head}_ms" in got.timings_ms
        if head == "mask":
            assert got.mask.height == clip.frames.shape[1] and got.mask.width == clip.frames.shape[2]
            assert got.mask.bits.dtype == np.int32  # bitmask-backed


def test_routing_at_the_budget_edge_and_sampling(pipe, reference, sample_videos, tasks):
    """A *_begin as the last allowed token is not followed by its placeholder (both sides); top-p is seeded."""
    from tpo_core.data.video import read_video

    clip = read_video(sample_videos[0], reference.config.vision.num_frames)
    tid = pipe.manifest.task_tokens["<box_begin>"].id
    word = reference.prompts.encode_text("red")[0]  # a plain token first, so <box_begin> is the last allowed one
    first, second = forcing(word, 0), forcing(tid, 1)

    def both(step, logits):
        return second(step, first(step, logits))

    ref = reference.generate(clip, "Where is it?", max_new_tokens=2, logits_processor=both)
    got = pipe.ask(clip, "Where is it?", max_new_tokens=2, logits_processor=both)
    assert got.token_ids == ref.token_ids == [word, tid] and got.tasks == ref.tasks == []
    compared = 0
    for seed in range(6):
        kw = {"max_new_tokens": 10, "do_sample": True, "top_p": 0.9, "temperature": 1.3, "seed": seed}
        try:
            ref = reference.generate(clip, "Describe it.", **kw)
        except ValueError as e:  # the reference sampled <track_box> (the runtime never generates it)
            assert "track_box" in str(e)
            continue
        got = pipe.ask(clip, "Describe it.", **kw)
        assert got.token_ids == ref.token_ids and got.text == ref.text
        compared += 1
    assert compared >= 2


def test_numpy_frames_input(pipe, reference):
    """A uint8 array of consecutive frames is sampled like a video (middle of segment)."""
    from runtime.video_io import Clip

    frames = np.random.default_rng(0).integers(0, 256, (40, 48, 80, 3), dtype=np.uint8)
    got = pipe.ask(frames, "When is the red circle visible?", max_new_tokens=6, fps=10.0)
    idx = ((np.arange(pipe.num_frames) + 0.5) * 40 / pipe.num_frames).astype(np.int64)
    clip = Clip(frames=frames[idx], timestamps=idx / 10.0, duration=4.0, width=80, height=48, fps=10.0, indices=idx,
                num_total_frames=40)
    assert got.token_ids == reference.generate(clip, "When is the red circle visible?", max_new_tokens=6).token_ids
