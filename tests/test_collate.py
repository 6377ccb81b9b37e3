"""The training collator: token layout, labels, head targets, padding."""

import numpy as np
import pytest
import torch

from tpo_core.config import get_preset
from tpo_core.data.collate import IGNORE_INDEX, TPOCollator
from tpo_core.data.synth_tasks import task_samples
from tpo_core.data.tokenizer_build import load_tokenizer
from tpo_core.prompting import PromptBuilder


@pytest.fixture(scope="module")
def setup(synth_root):
    cfg = get_preset("tiny")
    prompts = PromptBuilder(load_tokenizer(cfg.llm.tokenizer), cfg.llm.vocab_size, cfg.num_visual_tokens)
    samples = task_samples(synth_root)
    by_task = {}
    for s in samples:
        by_task.setdefault(s.task, s)
    assert set(by_task) == {"region", "temporal", "mask", "qa", "negative"}, f"data lacks a task: {set(by_task)}"
    return cfg, prompts, by_task


def test_batch_layout(setup):
    cfg, prompts, by_task = setup
    col = TPOCollator(cfg, prompts, mask_frames=3, seed=0)
    order = ["qa", "region", "temporal", "mask", "negative"]
    batch = col([by_task[t] for t in order], key=5)
    b, length = batch.input_ids.shape
    nq, t = cfg.num_visual_tokens, cfg.vision.num_frames
    assert batch.frames.shape == (5, t, 3, cfg.vision.img_size, cfg.vision.img_size)
    assert batch.labels.shape == batch.attention_mask.shape == batch.visual_mask.shape == (5, length)
    assert (batch.visual_mask.sum(1) == nq).all()
    ids = prompts.task_ids
    begin = {"region": ids.box_begin, "temporal": ids.time_begin, "mask": ids.track_begin}
    placeholder = {"region": ids.boxes, "temporal": ids.temp, "mask": ids.tracking}
    for i, task in enumerate(order):
        real = batch.attention_mask[i].bool()
        lab = batch.labels[i][real]
        assert (batch.labels[i][~real] == IGNORE_INDEX).all()
        assert (batch.labels[i][batch.visual_mask[i]] == IGNORE_INDEX).all()
        answer = lab[lab != IGNORE_INDEX].tolist()
        assert answer[-1] == prompts.eos_id  # EOS is trained
        n_real = int(real.sum())
        assert batch.input_ids[i, n_real - 1] == prompts.eos_id
        if task in ("qa", "negative"):  # answered in text: no head
            assert batch.placeholder_pos[i] == -1
            assert not set(answer) & set(begin.values())
        else:
            pos = int(batch.placeholder_pos[i])
            assert batch.input_ids[i, pos] == placeholder[task]
            assert batch.input_ids[i, pos - 1] == begin[task]
            assert batch.labels[i, pos] == IGNORE_INDEX  # the placeholder is forced, never predicted
            assert batch.labels[i, pos - 1] == begin[task]  # the *_begin token is trained
    assert batch.head_items == {"region": [1], "temporal": [2], "mask": [3]}
    assert batch.region_boxes.shape == (1, 4)
    assert torch.allclose(batch.region_boxes[0], torch.tensor(by_task["region"].box, dtype=torch.float32))
    assert len(batch.temporal_spans) == 1 and batch.temporal_spans[0].shape[1] == 2
    assert batch.temporal_relevance.shape == (1, t) and batch.frame_times.shape == (5, t)
    s = cfg.mask.low_res_size
    assert batch.mask_targets.shape == (1, 3, s, s) and set(batch.mask_targets.unique().tolist()) <= {0.0, 1.0}
    assert batch.mask_frames[0].dtype == torch.uint8 and batch.mask_frames[0].shape[0] == 3


def test_temporal_relevance_matches_windows(setup):
    cfg, prompts, by_task = setup
    col = TPOCollator(cfg, prompts)
    sample = by_task["temporal"]
    batch = col([sample])
    clip = col.clip(sample)
    inside = np.array([any(s <= t <= e for s, e in sample.windows) for t in clip.timestamps])
    assert np.array_equal(batch.temporal_relevance[0].numpy() > 0, inside)
    cx, w = batch.temporal_spans[0][0].tolist()
    st, ed = sample.windows[0]
    assert cx == pytest.approx((st + ed) / 2 / sample.duration, abs=1e-5)
    assert w == pytest.approx((ed - st) / sample.duration, abs=1e-5)


def test_mask_frames_reproducible_and_first_frame(setup):
    cfg, prompts, by_task = setup
    col = TPOCollator(cfg, prompts, mask_frames=4, seed=3)
    a, b = col([by_task["mask"]], key=11), col([by_task["mask"]], key=11)
    assert torch.equal(a.mask_targets, b.mask_targets) and torch.equal(a.mask_frames[0], b.mask_frames[0])
    clip = col.clip(by_task["mask"])
    assert torch.equal(a.mask_frames[0][0], torch.from_numpy(clip.frames[0]))  # frame 0 is the prompted frame


def test_clip_cache_decodes_once(setup):
    cfg, prompts, by_task = setup
    col = TPOCollator(cfg, prompts)
    col([by_task["region"]])
    col([by_task["region"]])
    assert col.cache.misses == 1 and col.cache.hits >= 1


def test_errors_name_the_problem(setup):
    cfg, prompts, by_task = setup
    with pytest.raises(ValueError, match="mask_frames"):
        TPOCollator(cfg, prompts, mask_frames=99)
    col = TPOCollator(cfg, prompts)
    with pytest.raises(ValueError, match="empty"):
        col([])
