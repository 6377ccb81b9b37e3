"""Dense patch labels (issue 12): the synthetic generator's per-patch class composition, the collator's targets,
the ``patch`` loss, the vision probe of ``tpo eval`` and the re-planned time budget."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tpo_core.data.patch_labels import (
    FRAMES,
    GRID,
    MAX_OBJECTS,
    NUM_CLASSES,
    PatchLabels,
    class_name,
    patch_class,
    scene_patch_labels,
)
from tpo_core.data.synth_scene import COLOURS, SHAPES, ObjectSpec, SceneSpec, render_labels


def _scene(width=96, height=64, frames=40):
    scene = SceneSpec(vid="t", width=width, height=height, fps=10, num_frames=frames, texture="noise",
                      background="black", texture_seed=0)
    scene.objects.append(ObjectSpec(obj_id=1, shape="square", colour="red", size=8, start=(20.0, 20.0),
                                    end=(70.0, 40.0), on=0, off=frames, timing="always"))
    scene.objects.append(ObjectSpec(obj_id=2, shape="circle", colour="cyan", size=6, start=(60.0, 30.0),
                                    end=(60.0, 30.0), on=frames // 2, off=frames, timing="appears"))
    return scene


def test_class_ids_cover_every_colour_and_shape_once():
    ids = {patch_class(c, s) for c in COLOURS for s in SHAPES}
    assert ids == set(range(1, NUM_CLASSES))
    assert class_name(patch_class("cyan", "diamond")) == "cyan diamond" and class_name(0) == "background"


def test_cover_is_the_exact_share_of_each_cell():
    from tpo_core.data.video import sample_indices

    scene = _scene()
    labels = render_labels(scene)
    out = scene_patch_labels(scene, labels)
    assert out["cover"].shape == (FRAMES, GRID, GRID, 1 + MAX_OBJECTS)
    assert out["indices"].tolist() == sample_indices(scene.num_frames, FRAMES).tolist()
    assert out["classes"].tolist() == [0, patch_class("red", "square"), patch_class("cyan", "circle"), 0, 0]
    ch, cw = scene.height // GRID, scene.width // GRID  # 8 x 12 px cells: INTER_AREA is an exact mean here
    for t, f in enumerate(out["indices"]):
        for k in range(1 + MAX_OBJECTS):
            share = (labels[f] == k).reshape(GRID, ch, GRID, cw).mean(axis=(1, 3))
            assert np.abs(out["cover"][t, :, :, k] / 255.0 - share).max() <= 0.5 / 255 + 1e-6
    # the object that appears halfway is absent from the early sampled frames and present in the late ones
    assert out["cover"][0, :, :, 2].sum() == 0 and out["cover"][-1, :, :, 2].sum() > 0


def test_generated_dataset_has_labels_and_lookup_checks_the_frames(synth_root):
    import json

    from tpo_core.data.video import read_video

    labels = PatchLabels.open(synth_root)
    manifest = json.loads((synth_root / "manifest.json").read_text())
    assert labels is not None and manifest["generator_version"] >= 3
    assert manifest["patch_labels"] == {"file": "patch_labels.npz", "grid": GRID, "frames": FRAMES,
                                        "classes": NUM_CLASSES}
    videos = sorted((synth_root / "videos").glob("*.mp4"))
    assert len(labels.rows) == len(videos)
    clip = read_video(videos[0], FRAMES)
    cover, classes = labels.get(str(videos[0]), clip.indices)
    assert cover.shape == (FRAMES, GRID * GRID, 1 + MAX_OBJECTS) and np.allclose(cover.sum(-1), 1.0, atol=1e-5)
    assert classes[0] == 0 and (classes[1:] > 0).any()
    assert labels.get(str(videos[0]), clip.indices + 1) is None  # another frame sampling: no labels
    assert labels.get(str(synth_root / "elsewhere.mp4"), clip.indices) is None
    assert PatchLabels.open(synth_root / "videos") is None


def _collator(labels):
    from tpo_core.config import get_preset
    from tpo_core.data.collate import TPOCollator
    from tpo_core.data.tokenizer_build import load_tokenizer
    from tpo_core.prompting import PromptBuilder

    cfg = get_preset("tiny")
    prompts = PromptBuilder(load_tokenizer(cfg.llm.tokenizer), cfg.llm.vocab_size, cfg.num_visual_tokens)
    return cfg, TPOCollator(cfg, prompts, patch_labels=labels)


def test_collator_and_patch_loss(synth_root, samples):
    from tpo_core.train.objective import patch_terms

    cfg, collate = _collator(PatchLabels.open(synth_root))
    batch = collate(samples[:6])
    b = len(samples[:6])
    assert batch.patch_cover.shape == (b, FRAMES, GRID * GRID, 1 + MAX_OBJECTS)
    assert batch.patch_classes.shape == (b, 1 + MAX_OBJECTS) and batch.patch_valid.tolist() == [1.0] * b
    assert cfg.vision.patch_classes == NUM_CLASSES
    # logits that put all mass on each patch's dominant class: accuracy 1 and a loss below a uniform guess's
    target = torch.zeros(b, FRAMES, GRID * GRID, NUM_CLASSES)
    target.scatter_add_(-1, batch.patch_classes[:, None, None, :].expand(-1, FRAMES, GRID * GRID, -1),
                        batch.patch_cover)
    oracle = torch.log(target.clamp(min=1e-4))
    loss, acc = patch_terms(oracle, batch)
    uniform, uacc = patch_terms(torch.zeros_like(oracle), batch)
    assert acc.item() == 1.0 and uacc.item() < 0.2
    assert loss.item() < 0.5 * uniform.item() and uniform.item() == pytest.approx(np.log(NUM_CLASSES), rel=1e-4)
    # a sample without labels counts nowhere
    batch.patch_valid[:] = 0.0
    assert patch_terms(torch.zeros_like(oracle), batch)[0].item() == 0.0
    # no labels at all: no patch fields
    assert _collator(None)[1](samples[:2]).patch_cover is None


def test_stage1_trains_the_patch_classifier(synth_root, samples, tmp_path):
    """Stage 1 of the tiny recipe with the patch term: the classifier is trained, the term is logged."""
    import json

    from tpo_core.train.stages import load_train_config
    from tpo_core.train.trainer import train

    over = {"stages": {"stage1": {"steps": 3, "batch_size": 4, "log_every": 1, "warmup_steps": 0}}}
    cfg = load_train_config(None, overrides=over)
    assert cfg.stage("stage1").loss_weights["patch"] == 1.0
    train(cfg, synth_root, tmp_path, stages=["stage1"], cpu=True, quiet=True, samples=samples)
    rows = [json.loads(x) for x in (tmp_path / "stage1" / "metrics.jsonl").read_text().splitlines()]
    assert all("patch" in r and "patch_acc" in r for r in rows) and rows[0]["patch"] > 0
    assert rows[-1]["patch"] < rows[0]["patch"]


def test_vision_probe_reports_against_its_baselines(synth_root):
    from tpo_core.config import get_preset
    from tpo_core.model import TPOModel
    from tpo_core.train.probes import format_probe, patch_probe

    model = TPOModel.from_config(get_preset("tiny"), seed=0)
    probe = patch_probe(model, synth_root)
    assert probe["videos"] == len(list((synth_root / "videos").glob("*.mp4")))
    assert probe["object_patches"] > 0 and 0 < probe["majority_acc"] <= 1
    pr = probe["presence"]
    assert 0 <= pr["accuracy"] <= 1 and 0 < pr["baseline_all_absent_accuracy"] < 1
    assert "vision" in format_probe(probe) and "majority-class baseline" in format_probe(probe)
    # the release's vision (no classifier) and data without labels: no probe, and the report has no line
    model.vision.patch_classifier = None
    assert patch_probe(model, synth_root) is None and format_probe(None) is None


def test_time_budget_replans_from_the_steady_step_time(monkeypatch):
    """Steps 1-30 take 1 s (a cold start), the rest 0.5 s: the first plan (from the probe) would stop at 100 s
    with 100 steps; the re-plans use the steady step time and fill the 100 s budget with ~170 steps."""
    import tpo_core.train.trainer as trainer

    clock = [0.0]
    monkeypatch.setattr(trainer.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(trainer, "_device_sync", lambda device: None)
    r = SimpleNamespace(stage=SimpleNamespace(time_budget_s=100.0, steps=1000, name="stage1"),
                        state=SimpleNamespace(step=0, planned_steps=None), total_steps=1000,
                        schedule=SimpleNamespace(total=1000),
                        acc=SimpleNamespace(device="cpu", is_main_process=False, num_processes=1))
    probe: dict = {}
    plans = []
    while r.state.step < r.total_steps:
        r.state.step += 1
        clock[0] += 1.0 if r.state.step <= 30 else 0.5
        before = r.total_steps
        trainer.StageRunner._plan_budget(r, 0.0, probe)
        if r.total_steps != before:
            plans.append((r.state.step, r.total_steps))
    assert plans[0] == (30, 100)  # the probe's plan: 70 s left at 1 s/step
    assert plans[1][0] >= 50  # a re-plan measures at least the probe's 20 steps (one slow step cannot swing it)
    assert 165 <= r.total_steps <= 172 and r.schedule.total == r.total_steps == r.state.planned_steps
    assert clock[0] <= 100.5  # within the budget
    # a budget that the configured steps fill first: never beyond ``steps``
    r.stage.steps, r.state.step, r.state.planned_steps, r.total_steps, clock[0] = 50, 0, None, 50, 0.0
    probe = {}
    while r.state.step < r.total_steps:
        r.state.step += 1
        clock[0] += 0.5
        trainer.StageRunner._plan_budget(r, 0.0, probe)
    assert r.total_steps == 50


def test_mask_prompt_probe_separates_the_prompt_from_the_segmenter(synth_root, samples):
    """The label-box J depends only on the mask head: changing the LLM leaves it, and the model's own J is scored."""
    import torch

    from tpo_core.config import get_preset
    from tpo_core.model import TPOModel
    from tpo_core.train.probes import format_probe, mask_prompt_probe

    model = TPOModel.from_config(get_preset("tiny"), seed=0)
    a = mask_prompt_probe(model, samples, max_samples=2)
    assert a is not None and a["samples"] >= 1
    assert 0 <= a["J_label_box_prompt"] <= 1 and 0 <= a["J_model"] <= 1
    with torch.no_grad():
        for p in model.llm.parameters():
            p.add_(0.5)
    b = mask_prompt_probe(model, samples, max_samples=2)
    assert b["J_label_box_prompt"] == pytest.approx(a["J_label_box_prompt"], abs=1e-9)
    assert "J tracking from the label box" in format_probe(None, a)
    tracked = a["samples"] * (model.config.vision.num_frames - 1)
    assert a["tracked_present_frames"] + a["tracked_absent_frames"] == tracked
    assert "a mask drawn where it is absent" in format_probe(None, a)
    assert mask_prompt_probe(model, [s for s in samples if s.task != "mask"]) is None


def test_tracked_frame_split_scores_visible_frames_and_counts_masks_on_absent_ones():
    from tpo_core.train.probes import tracked_frame_split

    gts = np.zeros((4, 4, 4), bool)
    gts[0, :2, :2] = gts[1, :2, :2] = gts[3, :2, :2] = True  # frame 2: the object is gone
    masks = np.zeros_like(gts)
    masks[0] = gts[0]  # frame 0 (the prompt) is not counted
    masks[1, :2, :1] = True  # half the object
    masks[2, 3, 3] = True  # a mask where the object is absent
    masks[3] = gts[3]
    present, absent = tracked_frame_split(masks, gts)
    assert present == pytest.approx([0.5, 1.0])
    assert absent == [True]


def test_linear_probe_scores_separable_and_random_labels():
    from tpo_core.train.probes import _linear_probe_accuracy

    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 64, generator=g)  # more dimensions than a half has rows per class, as in the LLM probe
    train = torch.arange(400) % 2 == 0
    assert _linear_probe_accuracy(x, (x[:, 3] > 0).float(), train) >= 0.8  # 200 rows in 64 dimensions: ~0.88
    assert _linear_probe_accuracy(x, (torch.rand(400, generator=g) > 0.5).float(), train) < 0.65


def test_presence_probe_reports_the_llm_decision_and_a_probe_per_layer(samples):
    """On the embedded default: one probe accuracy per hidden-state layer (embeddings + each block), the decision
    rates consistent with each other, a report line; None without negatives."""
    from tpo_core.model import load_model
    from tpo_core.train.probes import format_probe, presence_probe

    model = load_model("embedded").float()
    p = presence_probe(model, samples, per_class=6)
    assert p is not None and p["questions"] == p["present"] + min(6, sum(s.task == "negative" for s in samples))
    assert len(p["layer_probe_accuracy"]) == model.config.llm.num_layers + 1
    assert all(0.0 <= a <= 1.0 for a in p["layer_probe_accuracy"])
    n_neg = p["questions"] - p["present"]
    right = (1 - p["heads_on_absent"]) * n_neg + (1 - p["denials_of_present"]) * p["present"]
    assert p["decision_accuracy"] == pytest.approx(right / p["questions"])
    assert "linear probe of its state per layer" in format_probe(None, None, p)
    assert presence_probe(model, [s for s in samples if s.task != "negative"]) is None
