"""Every head gets a gradient and training reads nothing back per step: device-side span matching equals the
Hungarian optimum, batched mask losses equal the per-sample ones, per-group clipping and norms, gradient
scaling into the trunk, time budgets, worker-process collation and the clip store (tiny preset, CPU)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from tpo_core.data.clip_store import ClipStore, build_clip_store
from tpo_core.data.video import read_video
from tpo_core.modeling.heads.mask_track import TrackOutput
from tpo_core.modeling.heads.temporal import TemporalOutput
from tpo_core.modeling.losses import hungarian_match, match_cost, match_group, span_groups, temporal_loss
from tpo_core.modeling.mask_losses import mask_head_losses
from tpo_core.train.objective import batched_mask_terms, grad_scale
from tpo_core.train.stages import StageConfig, default_train_config, load_train_config
from tpo_core.train.trainer import StageRunner, _accelerator, build_model, train

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: single-threaded torch


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_device_matching_finds_the_hungarian_optimum(n):
    gen = torch.Generator().manual_seed(n)
    logits, spans = torch.randn(6, 10, 2, generator=gen), torch.rand(6, 10, 2, generator=gen)
    targets = torch.rand(6, n, 2, generator=gen)
    queries = match_group(logits, spans, targets)  # [G, n]
    cost = match_cost(logits, spans, targets)
    for g in range(6):
        assert len(set(queries[g].tolist())) == n  # distinct queries
        rows, cols = linear_sum_assignment(cost[g].numpy())
        best = cost[g].numpy()[rows, cols].sum()
        assert cost[g, queries[g], torch.arange(n)].sum().item() == pytest.approx(best, abs=1e-5)


def test_temporal_loss_equals_the_per_sample_hungarian_reference():
    gen = torch.Generator().manual_seed(0)
    b, q, length = 5, 10, 8
    out = TemporalOutput(torch.randn(b, q, 2, generator=gen), torch.rand(b, q, 2, generator=gen),
                         torch.randn(b, length, generator=gen))
    spans = [torch.rand(k, 2, generator=gen) for k in (1, 3, 0, 2, 6)]  # 6 windows: the scipy path
    rel = (torch.rand(b, length, generator=gen) > 0.5).float() * torch.randint(1, 4, (b, length), generator=gen)
    got = temporal_loss(out, spans, rel, groups=span_groups(spans), levels=torch.unique(rel[rel > 0]))
    matches = hungarian_match(out.pred_logits, out.pred_spans, spans)
    pred = torch.cat([out.pred_spans[i, qi] for i, (qi, _) in enumerate(matches)])
    tgt = torch.cat([spans[i][ti] for i, (_, ti) in enumerate(matches)])
    assert got["span_l1"].item() == pytest.approx(torch.nn.functional.l1_loss(pred, tgt).item(), abs=1e-6)
    again = temporal_loss(out, spans, rel)  # groups / levels derived inside give the same
    assert {k: v.item() for k, v in got.items()} == pytest.approx({k: v.item() for k, v in again.items()})


def test_batched_mask_terms_equal_the_per_sample_losses():
    gen = torch.Generator().manual_seed(1)
    bm, t, s = 3, 4, 8
    raw = torch.randn(bm, t, 1, s, s, generator=gen)
    obj = torch.randn(bm, t, 1, generator=gen)
    targets = (torch.rand(bm, t, s, s, generator=gen) > 0.6).float()
    targets[1, 2] = 0  # absent on one frame
    pixel, score = batched_mask_terms(raw, obj, targets)
    ref_pixel, ref_obj = [], []
    for j in range(bm):
        one = TrackOutput(low_res_logits=raw[j], object_score_logits=obj[j], iou=obj[j], raw_low_res_logits=raw[j])
        parts = mask_head_losses(one, targets[j])
        ref_pixel.append(parts["mask_bce"] + parts["mask_dice"])
        ref_obj.append(parts["object_score"])
    assert pixel.item() == pytest.approx(torch.stack(ref_pixel).mean().item(), abs=1e-6)
    assert score.item() == pytest.approx(torch.stack(ref_obj).mean().item(), abs=1e-6)


def test_grad_scale_scales_only_the_backward():
    x = torch.ones(3, requires_grad=True)
    y = grad_scale(x, 0.1)
    assert torch.equal(y, x)
    (2 * y).sum().backward()
    assert torch.allclose(x.grad, torch.full((3,), 0.2))


def _one_per_task(samples):
    seen = {}
    for s in samples:
        seen.setdefault(s.task, s)
    return list(seen.values())


@pytest.mark.parametrize("mode", ["group", "global"])
def test_every_group_is_clipped_and_its_norm_logged(mode, samples, tmp_path):
    stage = default_train_config("tiny").stage("stage3")
    picked = _one_per_task(samples)
    stage = StageConfig(**{**stage.to_dict(), "steps": 1, "batch_size": len(picked), "warmup_steps": 0,
                           "grad_clip": 0.01, "clip_mode": mode})
    cfg = default_train_config("tiny")
    runner = StageRunner(build_model(cfg, None), stage, cfg, picked, tmp_path, _accelerator(cpu=True), cache=None,
                         quiet=True)
    runner.model.train()
    runner.wrapped(runner._batch(0).to("cpu"))["loss"].backward()
    norms = {k: v.item() for k, v in runner._clip().items()}
    assert set(norms) == {"grad_norm"} | {f"grad_norm/{g}" for g in runner.groups}
    assert all(v > 0 for v in norms.values())  # every trainable group got a gradient (all tasks in the batch)
    after = {g: torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in ps if p.grad is not None])).item()
             for g, ps in runner.groups.items()}
    if mode == "group":
        assert all(v <= 0.01 * 1.001 for v in after.values())
    else:
        total = float(np.linalg.norm(list(after.values())))
        assert total == pytest.approx(0.01, rel=1e-3)
        ratio = [after[g] / norms[f"grad_norm/{g}"] for g in after]
        assert max(ratio) == pytest.approx(min(ratio), rel=1e-4)  # one factor for all


def _stage1(steps, **extra):
    over = {"stages": {"stage1": {"steps": steps, "batch_size": 2, "log_every": 1, "warmup_steps": 0,
                                  "lr": {"llm_base": 1e-3, "lora": 1e-3, "task_tokens": 1e-3}, **extra}}}
    return load_train_config(None, overrides=over)


def _losses(out_dir):
    return [json.loads(line) for line in (out_dir / "stage1" / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_worker_processes_give_the_same_trajectory(samples, tmp_path):
    cfg = _stage1(3)
    train(cfg, None, tmp_path / "thread", stages=["stage1"], cpu=True, quiet=True, samples=samples)
    train(cfg, None, tmp_path / "procs", stages=["stage1"], cpu=True, quiet=True, samples=samples, loader_workers=2)
    a, b = _losses(tmp_path / "thread"), _losses(tmp_path / "procs")
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3]
    for ra, rb in zip(a, b):
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-6)
        assert {k for k in ra if k.startswith("grad_norm/")} == {"grad_norm/llm_base", "grad_norm/lora",
                                                                  "grad_norm/task_tokens"}


def test_a_time_budget_shortens_the_stage(samples, tmp_path, monkeypatch):
    import tpo_core.train.trainer as trainer

    monkeypatch.setattr(trainer, "BUDGET_PROBE", (1, 3))
    cfg = _stage1(9, time_budget_s=1e-3)
    (result,) = train(cfg, None, tmp_path, stages=["stage1"], cpu=True, quiet=True, samples=samples)
    assert result.steps == 3 and not result.interrupted
    state = json.loads((tmp_path / "stage1" / "trainer_state.json").read_text())
    assert state["planned_steps"] == 3 and state["finished"]
    summary = json.loads((tmp_path / "final" / "train_summary.json").read_text())
    assert summary[0]["steps"] == 3 and summary[0]["configured_steps"] == 9


def test_clip_store_returns_what_read_video_returns(synth_root, tmp_path):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(synth_root, root)
    build_clip_store(root, 8, workers=2)
    store = ClipStore.open(root, 8)
    assert ClipStore.open(root, 16) is None and store.get(tmp_path / "elsewhere.mp4") is None
    videos = sorted((root / "videos").glob("*.mp4"))
    assert len(store.videos) == len(videos) >= 3
    for path in videos:
        a, b = read_video(path, 8), store.get(path)
        for name in ("frames", "indices", "timestamps"):
            assert np.array_equal(getattr(a, name), getattr(b, name)), name
        for name in ("fps", "num_total_frames", "duration", "height", "width", "path", "notes"):
            assert getattr(a, name) == getattr(b, name), name
    with pytest.raises(FileNotFoundError, match="tpo data synth"):
        build_clip_store(tmp_path / "empty", 8)


def test_explicit_mask_and_sliced_visual_tokens_equal_the_reference_paths(samples):
    """The objective's 4D causal + padding mask gives the LLM's own 2D-mask result, and writing the visual tokens
    as one slice equals ``masked_scatter`` into the visual slots."""
    from tpo_core.config import get_preset
    from tpo_core.data.collate import TPOCollator
    from tpo_core.model import TPOModel
    from tpo_core.train.objective import TPOObjective, causal_padding_mask

    model = TPOModel.from_config(get_preset("tiny"), seed=0).eval()
    batch = TPOCollator(model.config, model.prompts)(_one_per_task(samples))
    assert batch.visual_start is not None and (batch.attention_mask == 0).any()  # padded rows
    objective = TPOObjective(model, {})
    with torch.no_grad():
        visual, _ = model.encode_video(batch.frames)
        sliced = objective._embeddings(batch, visual)
        scattered = model.llm.embed(batch.input_ids).masked_scatter(batch.visual_mask.unsqueeze(-1), visual)
        assert torch.equal(sliced, scattered)
        a = model.llm(sliced, attention_mask=batch.attention_mask)[0]
        b = model.llm(sliced, attention_mask=causal_padding_mask(batch.attention_mask))[0]
    real = batch.attention_mask.bool()
    assert torch.allclose(a[real], b[real], atol=1e-5)


def _agree_worker(rank: int, world: int, port: int, out) -> None:
    import os
    from types import SimpleNamespace

    import torch.distributed as dist

    from tpo_core.train.trainer import agree_any, agree_min

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        acc = SimpleNamespace(num_processes=world, device=torch.device("cpu"))
        # a re-plan / deadline flag seen by one process only, and per-process step plans
        out.put((rank, agree_any(acc, rank == 1, False), agree_min(acc, 100 - 7 * rank)))
    finally:
        dist.destroy_process_group()


def test_ddp_processes_agree_on_time_based_decisions():
    """Under DDP a re-plan or the --max-minutes stop measured on one process must apply to all at the same step, and
    the step plans must be equal, or the next gradient all-reduce hangs: a flag set on any process is set on all, and
    the shortest plan wins (2 CPU processes, gloo)."""
    import socket

    import torch.multiprocessing as mp

    from tpo_core.train.trainer import agree_any, agree_min

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_agree_worker, args=(r, 2, port, out)) for r in range(2)]
    for p in procs:
        p.start()
    results = sorted(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert results == [(0, (True, False), 93), (1, (True, False), 93)]
    one = type("Acc", (), {"num_processes": 1, "device": torch.device("cpu")})()
    assert agree_any(one, True, False) == (True, False) and agree_min(one, 5) == 5  # no collective without DDP


def test_two_process_ddp_stops_every_process_at_one_step(synth_root, tmp_path):
    """A real 2-process DDP run on the CPU (torchrun, gloo; ``accelerate launch --cpu`` runs a single process): the
    ``--max-minutes`` stop is agreed, so both processes save the same checkpoint and exit 0 instead of one waiting
    in an all-reduce for the other."""
    import os
    import subprocess
    import sys

    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"preset": "tiny", "stages": {"stage1": {"steps": 400, "batch_size": 2,
                                                                       "log_every": 2}}}))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m",
                           "tpo_core.train", "--preset", "tiny", "--stage", "1", "--config", str(cfg), "--data",
                           str(synth_root), "--out", str(tmp_path / "run"), "--quiet", "--cpu", "--max-minutes",
                           "0.05"], capture_output=True, text=True, timeout=240,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("time budget reached") == 2  # each process stopped ...
    saved = list((tmp_path / "run" / "stage1" / "checkpoints").iterdir())
    assert len(saved) == 1  # ... at the same step
    step = int(saved[0].name.split("_")[1])
    assert step % 2 == 0 and 0 < step < 400  # at a logging step, well before the 400 configured
    assert (tmp_path / "run" / "stage1" / "loss_curve.png").stat().st_size > 1000  # the cut stage keeps its plot
