"""Training: per-stage freezing, loss terms overfit, exact resume, CLI smoke (tiny preset, CPU, few steps)."""

import json
import math

import pytest
import torch

from tpo_core.train.params import named_groups
from tpo_core.train.stages import StageConfig, default_train_config, load_train_config
from tpo_core.train.trainer import StageRunner, _accelerator, build_model, train

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: single-threaded torch


@pytest.fixture(scope="module")
def accelerator():
    return _accelerator(cpu=True)


def _snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


STAGES = {
    **{name: st for name, st in default_train_config("tiny").stages.items()},
    "paper_stage1": StageConfig(name="stage1", lr={"lora": 1e-3, "task_rows": 1e-3, "task_tokens": 1e-3},
                                loss_weights={"region": 0, "temporal": 0, "mask_pixel": 0, "mask_object": 0,
                                              "mask_distill": 0, "mask_box": 0}),
}


@pytest.mark.parametrize("key", list(STAGES))
def test_one_step_changes_exactly_the_unfrozen_parameters(key, samples, accelerator, tmp_path):
    stage = STAGES[key]
    picked = _one_per_task(samples)
    n = sum(s.task in stage.tasks for s in picked)
    stage = StageConfig(**{**stage.to_dict(), "steps": 1, "batch_size": n, "warmup_steps": 0, "task_weights": {}})
    cfg = default_train_config("tiny")
    model = build_model(cfg, None)
    runner = StageRunner(model, stage, cfg, picked, tmp_path, accelerator, cache=None, quiet=True)
    before = _snapshot(model)
    trainable = {n for n, _, _ in runner.freeze.trainable}
    runner.step()
    after = _snapshot(model)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed <= trainable, f"frozen parameters changed: {sorted(changed - trainable)[:5]}"
    groups = named_groups(model)
    for group in stage.lr:
        if group == "task_rows" and "llm_base" in stage.lr:
            continue
        names = {n for n, _ in groups[group]}
        assert names & changed, f"{key}: no parameter of the trained group {group} changed"
    assert trainable == {n for n, p in model.named_parameters() if p.requires_grad}
    if "task_rows" in stage.lr and "llm_base" not in stage.lr:
        v = model.config.llm.vocab_size
        for n, _ in groups["task_rows"]:
            assert torch.equal(before[n][:v], after[n][:v]), f"{n}: base-vocabulary rows changed"
            assert not torch.equal(before[n][v:], after[n][v:]), f"{n}: task-token rows did not change"
    runner.freeze.remove()


def _one_per_task(samples, extra=("region",)):
    by_task = {}
    for s in samples:
        by_task.setdefault(s.task, []).append(s)
    return [by_task[t][0] for t in ("qa", "region", "temporal", "mask")] + [by_task[t][-1] for t in extra]


@pytest.mark.slow
def test_every_loss_is_finite_and_decreases_when_overfitting(samples, accelerator, tmp_path):
    batch_samples = _one_per_task(samples)
    stage = StageConfig(name="stage3", steps=24, batch_size=len(batch_samples), warmup_steps=0, min_lr_ratio=1.0,
                        mask_frames=2, lr={g: 2e-3 for g in ("vision", "connector", "llm_base", "lora", "task_tokens",
                                                              "region_head", "temporal_head", "mask_prompt",
                                                              "mask_sam")},
                        loss_weights={"temporal": 1.0})
    cfg = default_train_config("tiny")
    model = build_model(cfg, None)
    runner = StageRunner(model, stage, cfg, batch_samples, tmp_path, accelerator, cache=None, quiet=True)
    runner.stream.order = lambda epoch: torch.arange(len(batch_samples)).numpy()  # the same batch every step
    history = [runner.step() for _ in range(stage.steps)]
    terms = ("lm", "region", "temporal", "mask_pixel", "mask_distill", "mask_box")
    for term in terms + ("loss",):
        values = [h[term] for h in history]
        assert all(math.isfinite(v) for v in values), f"{term} is not finite: {values}"
        first, last = sum(values[:3]) / 3, sum(values[-3:]) / 3
        assert last < 0.9 * first, f"{term} did not decrease: {first:.4f} -> {last:.4f}"


def _losses(out_dir, stage="stage1"):
    lines = (out_dir / stage / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r["loss"]) for r in map(json.loads, lines)]


@pytest.mark.slow
def test_resume_reproduces_the_loss_trajectory(samples, tmp_path):
    over = {"stages": {"stage1": {"steps": 6, "batch_size": 2, "log_every": 1, "save_every": 3,
                                  "lr": {"llm_base": 1e-3, "lora": 1e-3, "task_tokens": 1e-3}}}}
    cfg = load_train_config(None, overrides=over)
    full, part = tmp_path / "full", tmp_path / "part"
    train(cfg, None, full, stages=["stage1"], cpu=True, quiet=True, samples=samples)
    ckpt = full / "stage1" / "checkpoints" / "step_000003"
    assert (ckpt / "optimizer.safetensors").is_file() and (ckpt / "trainer_state.json").is_file()
    assert not list(ckpt.glob("*.pt")) and not list(ckpt.glob("*.bin"))  # safetensors + JSON only
    train(cfg, None, part, stages=["stage1"], resume=ckpt, cpu=True, quiet=True, samples=samples)
    a, b = _losses(full), _losses(part)
    assert [s for s, _ in b] == [4, 5, 6]
    for (sa, la), (sb, lb) in zip(a[3:], b):
        assert sa == sb and la == pytest.approx(lb, rel=1e-6, abs=1e-7), f"step {sa}: {la} vs {lb}"
    from safetensors.torch import load_file

    fa = load_file(str(full / "stage1" / "model.safetensors"))
    fb = load_file(str(part / "stage1" / "model.safetensors"))
    assert all(torch.allclose(fa[k], fb[k], atol=1e-6) for k in fa)


@pytest.mark.slow
def test_cli_train_all_stages_then_eval(synth_root, tmp_path, capsys):
    from runtime.cli import main

    out = tmp_path / "run"
    rc = main(["train", "--preset", "tiny", "--stage", "all", "--data", str(synth_root), "--out", str(out),
               "--steps", "1", "--batch-size", "2", "--quiet", "--cpu"])
    assert rc == 0
    for st in ("stage1", "stage2", "stage3"):
        assert (out / st / "model.safetensors").is_file() and (out / st / "metrics.jsonl").is_file()
        assert (out / st / "loss_curve.png").stat().st_size > 1000
    assert (out / "final" / "config.json").is_file()
    capsys.readouterr()
    rc = main(["eval", "--checkpoint", str(out / "final"), "--data", str(synth_root), "--per-task", "1", "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["num_samples"] == 5  # one per task, the negative question included
    assert summary["region"]["count"] == summary["temporal"]["count"] == summary["mask"]["count"] == 1
    assert 0.0 <= summary["routing_accuracy"] <= 1.0


def test_config_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="lr names"):
        StageConfig(name="stage1", lr={"nonsense": 1e-3})
    with pytest.raises(ValueError, match="unknown stage"):
        load_train_config(None, overrides={"stages": {"stage9": {"steps": 1}}})
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages: {stage2: {loss_weights: {typo: 1.0}}}\n")
    with pytest.raises(ValueError, match="typo"):
        load_train_config(bad)


def test_shipped_configs_load():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs" / "train"
    tiny = load_train_config(root / "tiny.yaml")
    assert tiny.to_dict() == default_train_config("tiny").to_dict()  # the file spells out the defaults
    big = load_train_config(root / "videochat_tpo_7b.yaml", preset="videochat-tpo-7b")
    assert big.preset == "videochat-tpo-7b"
    assert set(big.stage("stage1").lr) == {"lora", "task_rows", "task_tokens"}
    assert big.stage("stage2").loss_weights["temporal"] == 0.05 and "llm_base" not in big.stage("stage3").lr
    for name in ("ds_zero2.json", "ds_zero3.json"):
        cfg = json.loads((root / name).read_text())
        assert cfg["zero_optimization"]["stage"] in (2, 3) and cfg["bf16"]["enabled"]


def test_latest_checkpoint_prefers_the_newest(tmp_path):
    from tpo_core.train.trainer import latest_checkpoint

    assert latest_checkpoint(tmp_path) is None
    for rel in ("stage1", "stage2/checkpoints/step_000010", "stage2/checkpoints/step_000020"):
        (tmp_path / rel).mkdir(parents=True)
        (tmp_path / rel / "trainer_state.json").write_text("{}")
    assert latest_checkpoint(tmp_path) == tmp_path / "stage2" / "checkpoints" / "step_000020"
