"""Issue 13 row 11: box prompts. The runtime embeds the box with the exported ``loc_encoder`` graph into the prompt's
``<track_box>`` slot, exactly as ``TPOModel.generate(track_boxes=...)`` does: same first-step logits, same tokens, same
masks when routed to the mask head. Boxes are given in pixels of the video (as ``RegionResult.box``)."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reference():
    from tpo_core.model import load_model

    return load_model("embedded")


def _capture():
    seen = {}

    def processor(step, logits):
        if step == 0:
            seen["logits"] = np.array(logits.numpy() if hasattr(logits, "numpy") else logits, np.float32)
        return logits

    return seen, processor


def test_box_prompt_matches_the_reference(pipe, reference, sample_videos):
    clip = pipe.load_clip(sample_videos[0])
    box = (0.2 * clip.width, 0.25 * clip.height, 0.6 * clip.width, 0.9 * clip.height)
    norm = [[box[0] / clip.width, box[1] / clip.height, box[2] / clip.width, box[3] / clip.height]]
    runs = {}
    for name, b in (("box", box), ("other", (0, 0, clip.width / 4, clip.height / 4))):
        seen, proc = _capture()
        res = pipe.ask(clip, "Track this object.", boxes=[b], max_new_tokens=6, logits_processor=proc)
        runs[name] = (res, seen["logits"])
    seen, proc = _capture()
    ref = reference.generate(clip, "Track this object.", track_boxes=norm, max_new_tokens=6, logits_processor=proc)
    got, got_logits = runs["box"]
    np.testing.assert_allclose(got_logits, seen["logits"], atol=1e-4)
    assert got.token_ids == ref.token_ids and got.text == ref.text
    assert np.abs(runs["other"][1] - got_logits).max() > 1e-3  # the box reaches the LLM


def test_box_prompt_routed_to_the_mask_head(pipe, reference, sample_videos):
    from runtime.contract.routing import force_token

    clip = pipe.load_clip(sample_videos[1])
    box = (4.0, 4.0, clip.width / 2, clip.height / 2)
    norm = [[box[0] / clip.width, box[1] / clip.height, box[2] / clip.width, box[3] / clip.height]]
    tid = pipe.manifest.task_tokens["<track_begin>"].id
    got = pipe.ask(clip, "Segment <track_box> in the video.", boxes=[box], max_new_tokens=4,
                   logits_processor=force_token(tid, 0))
    ref = reference.generate(clip, "Segment <track_box> in the video.", track_boxes=norm, max_new_tokens=4,
                             logits_processor=force_token(tid, 0))
    assert got.tasks == ref.tasks == ["mask"] and got.token_ids == ref.token_ids
    for a, b in zip(got.mask.masks, ref.mask.masks):
        union = np.logical_or(a, b).sum()
        assert union == 0 or np.logical_and(a, b).sum() / union >= 0.99


def test_bad_boxes_are_refused(pipe, sample_videos):
    clip = pipe.load_clip(sample_videos[0])
    for boxes, msg in (([(1, 2, 3)], "four numbers"), ([(30, 5, 10, 20)], "x0 < x1"),
                       ([(0, 0, clip.width + 50, 10)], "outside"), ([(0, 0, float("nan"), 4)], "finite"),
                       ([(0, 0, 4, 4)] * 9, "at most 8"), ("0,0,4,4", "a list")):
        with pytest.raises(ValueError, match=msg):
            pipe.ask(clip, "Track this object.", boxes=boxes, max_new_tokens=2)
    with pytest.raises(ValueError, match=r"2 '<track_box>' slots but 1 box"):
        pipe.ask(clip, "Is <track_box> near <track_box>?", boxes=[(0, 0, 4, 4)], max_new_tokens=2)
