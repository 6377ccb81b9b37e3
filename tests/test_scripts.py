"""scripts/ablation.py (variant plan) and scripts/ship_default.py (LoRA merge + fp16 + token check)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_ablation_variants_share_budgets_and_parents():
    abl = _load("ablation")
    plan = {"batch_size": 64, "stage1_steps": 450, "steps": 350, "stage3_steps": 500}
    o = {name: abl.overrides(name, plan) for name in abl.GRAPH}
    assert o["stage1"]["stage1"]["steps"] == 450
    for task in abl.HEAD_TASKS:  # one head alone: only its task, the full head budget S
        assert o[f"a_{task}"]["stage2"]["tasks"] == [task] and o[f"a_{task}"]["stage2"]["steps"] == 350
    # the heads co-trained: the three head tasks by count (the default stage 2 also mixes in QA and negatives)
    assert o["b_cotrain"]["stage2"]["tasks"] == list(abl.HEAD_TASKS) and o["b_cotrain"]["stage2"]["task_weights"] == {}
    assert o["b_cotrain"]["stage2"]["steps"] == 350
    c = o["c_full"]
    assert c["stage2"]["steps"] + c["stage3"]["steps"] == 350  # same head budget as b
    assert "tasks" not in o["d_stage3_qa"]["stage3"]  # default stage-3 tasks include qa
    assert o["d_stage3_noqa"]["stage3"]["tasks"] == list(abl.HEAD_TASKS)
    assert abl.GRAPH["d_stage3_qa"][0] == abl.GRAPH["d_stage3_noqa"][0] == "b_cotrain"
    assert all(v["batch_size"] == 64 for ov in o.values() for v in ov.values())
    with pytest.raises(ValueError, match="unknown variant"):
        abl.overrides("e_other", plan)


def test_ship_default_merges_lora_and_halves_without_changing_tokens(tmp_path, synth_root):
    from tpo_core.config import get_preset
    from tpo_core.model import TPOModel

    model = TPOModel.from_config(get_preset("tiny"), seed=0)
    model.llm.apply_lora()
    for name, p in model.llm.lm.named_parameters():
        if "lora_B" in name:  # non-zero deltas, so the merge matters
            torch.nn.init.normal_(p, std=0.02)
    model.save_pretrained(tmp_path / "src")
    ship = _load("ship_default")
    rc = ship.main([str(tmp_path / "src"), str(tmp_path / "dst"), "--data", str(synth_root), "--samples", "4"])
    report = json.loads((tmp_path / "dst" / "ship_report.json").read_text())
    assert rc == 0 and report["merge_changed_tokens"] == 0 and report["samples"] == 4
    shipped = TPOModel.from_pretrained(tmp_path / "dst")
    assert not shipped.llm.lora_applied
    assert next(shipped.parameters()).dtype == torch.float32  # loaded as float32 from fp16 storage
    assert report["bytes"] < ship.BUDGET_BYTES


def test_ablation_calibration_measures_every_stage_on_a_mixed_pool(tmp_path, synth_root):
    abl = _load("ablation")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train").symlink_to(synth_root, target_is_directory=True)
    sec = abl.calibrate(tmp_path, batch_size=2, steps=4, window=2)
    assert set(sec) == {"stage1", "stage2", "stage3"} and all(v > 0 for v in sec.values())
    logged = [json.loads(line) for line in (tmp_path / "calibration" / "stage2" / "metrics.jsonl").open()]
    assert any("mask_pixel" in r for r in logged)  # the stage-2 pool holds mask samples, not only region ones


def test_ablation_aggregates_seeds_into_mean_and_spread(tmp_path):
    abl = _load("ablation")
    plan = {"batch_size": 64, "stage1_steps": 10, "steps": 8, "stage3_steps": 6, "seeds": [0, 1, 2],
            "videos": 30, "val_videos": 5, "per_task": 4, "time_caps": [60.0, 60.0, 60.0]}
    o = abl.overrides("c_full", plan)
    assert o["stage2"]["time_budget_s"] == 30.0 == o["stage3"]["time_budget_s"]
    for seed, region in zip((0, 1, 2), (0.2, 0.4, 0.6)):
        d = abl.run_dir(tmp_path, "b_cotrain", seed)
        (d / "final").mkdir(parents=True)
        summary = {"routing_accuracy": 1.0, "region": {"acc@0.5": region, "mean_iou": 0.5,
                                                       "baseline_mean_box": {"acc@0.5": 0.05}},
                   "temporal": {"r1@0.5": 0.6, "miou": 0.5, "baseline_whole_video": {"r1@0.5": 0.55}},
                   "mask": {"J": 0.3, "J&F": 0.3, "baseline_mean_box": {"J": 0.1}}, "qa": {"accuracy": 0.4},
                   "negative": {"false_found": 0.1}}
        (d / "eval.json").write_text(json.dumps(summary))
        (d / "final" / "train_summary.json").write_text(json.dumps([{"stage": "stage2", "steps": 7 + seed,
                                                                      "seconds": 9.0}]))
    out = tmp_path / "out"
    out.mkdir()
    runs = abl.collect(tmp_path, out, plan)
    assert sorted(runs["b_cotrain"]) == [0, 1, 2]
    data = json.loads((out / "ablation.json").read_text())
    cell = data["aggregate"]["b_cotrain"]["region Acc@0.5"]
    assert cell["mean"] == pytest.approx(0.4) and cell["std"] == pytest.approx(0.2) and len(cell["values"]) == 3
    assert data["steps"]["b_cotrain"] == {"0": {"stage2": 7}, "1": {"stage2": 8}, "2": {"stage2": 9}}
    table = (out / "ablation.md").read_text()
    assert "| b_cotrain | 100.0 ± 0.0 | 40.0 ± 20.0 |" in table and "s2: 9" in table
    assert "mean-box Acc@0.5 5.0" in table


def test_gpu_session_plans_within_its_budget(tmp_path):
    sess = _load("train_gpu_session")
    args = sess.parse(["--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")])
    s = sess.Session(args)
    stages = json.loads(sess.default_config(s, 400.0).read_text())["stages"]
    budgets = [stages[f"stage{i}"]["time_budget_s"] for i in (1, 2, 3)]
    # the stages end before the hard stop (--max-minutes), with room for the process start-up
    assert sum(budgets) + 3 * args.stage_overhead_s + args.startup_s <= 400.0 - sess.HARD_STOP_MARGIN_S
    assert budgets[2] > budgets[0] > budgets[1] > 0
    assert all(stages[f"stage{i}"]["batch_size"] == 128 for i in (1, 2, 3))
    assert args.budget_s <= 570 and sum(args.ablation_shares) == pytest.approx(1.0)
    # the newest model when the run was cut: stage 2 finished, stage 3 only has a checkpoint
    for d in ("default/stage2", "default/stage3/checkpoints/step_000100"):
        (tmp_path / "work" / d).mkdir(parents=True)
        (tmp_path / "work" / d / "model.safetensors").write_bytes(b"x")
    assert sess.trained_model(tmp_path / "work").name == "step_000100"
    summary = {"routing_accuracy": 0.97, "region": {"acc@0.5": 0.5, "baseline_mean_box": {"acc@0.5": 0.05}},
               "temporal": {"r1@0.5": 0.75, "baseline_whole_video": {"r1@0.5": 0.6}},
               "mask": {"J": 0.71, "baseline_mean_box": {"J": 0.2}}, "qa": {"accuracy": 0.8, "baseline_majority": 0.3},
               "negative": {"false_found": 0.1}, "diagnostics": {"flags": []}}
    lines = sess.target_lines(summary)
    assert [ln[:4] for ln in lines[:7]] == ["MET ", "MISS", "MET ", "MET ", "MET ", "MISS", "MET "]


def test_gpu_session_trains_the_default_under_ddp_on_several_gpus(tmp_path, monkeypatch):
    """``--default-gpu 0,1``: one Accelerate DDP launch over both GPUs; one id: the plain module entry point."""
    sess = _load("train_gpu_session")
    started = []
    for gpus, launcher in (("0,1", "accelerate.commands.launch"), ("1", None)):
        args = sess.parse(["--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"), "--default-gpu", gpus])
        s = sess.Session(args)
        monkeypatch.setattr(s, "start", lambda name, cmd, gpu=None, threads=1: started.append((cmd, gpu)))
        sess.start_default(s, {"train": tmp_path / "data"}, 300.0)
        cmd, gpu = started[-1]
        assert gpu == gpus and cmd[cmd.index("tpo_core.train") - 1] == "-m"
        if launcher:
            assert cmd[1:3] == ["-m", launcher] and cmd[cmd.index("--num_processes") + 1] == "2"
        else:
            assert "--num_processes" not in cmd


def test_gpu_session_continues_a_model_with_the_stages_it_is_given(tmp_path, monkeypatch):
    """``--stages 3 --init DIR``: stage 3 alone gets the whole training window and starts from DIR's weights; leaving
    out stage 1 without --init, or an --init folder without a model, is refused with the fix."""
    sess = _load("train_gpu_session")
    init = tmp_path / "model"
    init.mkdir()
    (init / "model.safetensors").write_bytes(b"x")
    base = ["--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")]
    args = sess.parse([*base, "--stages", "3", "--init", str(init)])
    s = sess.Session(args)
    stages = json.loads(sess.default_config(s, 400.0).read_text())["stages"]
    assert list(stages) == ["stage3"]
    assert stages["stage3"]["time_budget_s"] == pytest.approx(
        400.0 - sess.HARD_STOP_MARGIN_S - args.startup_s - args.stage_overhead_s, abs=0.1)
    started = []
    monkeypatch.setattr(s, "start", lambda name, cmd, gpu=None, threads=1: started.append(cmd))
    sess.start_default(s, {"train": tmp_path / "data"}, 300.0)
    cmd = started[-1]
    # the one stage's budget plus the start-up fits under the hard stop it is launched with (it did not: 2026-12-01)
    budget = json.loads((tmp_path / "work" / "default_config.json").read_text())["stages"]["stage3"]["time_budget_s"]
    assert budget + args.startup_s + args.stage_overhead_s <= 60 * float(cmd[cmd.index("--max-minutes") + 1]) + 0.1
    assert cmd[cmd.index("--stage") + 1] == "3" and cmd[cmd.index("--init") + 1] == str(init)
    full = sess.Session(sess.parse(base))
    assert list(json.loads(sess.default_config(full, 400.0).read_text())["stages"]) == ["stage1", "stage2", "stage3"]
    with pytest.raises(SystemExit):
        sess.parse([*base, "--stages", "2,3"])
    with pytest.raises(SystemExit):
        sess.parse([*base, "--stages", "3", "--init", str(tmp_path)])


def test_ship_default_flags_a_mask_head_whose_output_depends_on_the_precision(synth_root):
    """The fourth GPU default chose SAM2's candidate by an untrained IoU head: candidate 0 under bf16 autocast (its
    training), others in fp32 (evaluation, exports). ``mask_bf16_vs_fp32_iou`` shows it: the shipped model with its
    ``multimask_select="first"`` agrees with itself across precisions, the same weights choosing by IoU do not."""
    from tpo_core.data.synth_tasks import task_samples
    from tpo_core.data.video import read_video
    from tpo_core.model import load_model

    ship = _load("ship_default")
    model = load_model("embedded").float().eval()
    samples = [s for s in task_samples(synth_root) if s.task == "mask"][:4]
    clips = {s.video: read_video(s.video, model.config.vision.num_frames) for s in samples}
    assert model.mask_head.cfg.multimask_select == "first"
    assert ship._mask_precision_agreement(model, samples, clips) > 0.9
    model.mask_head.cfg = dataclasses.replace(model.mask_head.cfg, multimask_select="iou")
    assert ship._mask_precision_agreement(model, samples, clips) < 0.5
