"""TPO's claim at small scale: the ablation table, and the embedded default model, from one run.

Variants (tiny preset, one synthetic train split, one shared stage-1 checkpoint, batch ``--batch-size``):
  stage1:                         task assignment (LM loss; everything of the tiny model trainable)
  a_region / a_temporal / a_mask: stage 2 on that one task only (one head alone), S steps
  b_cotrain:                      stage 2 on all three head tasks (heads co-trained), S steps
  c_full:                         stage 2 for S/2 + stage 3 (joint, conversation mixed in) for S/2: b's budget
  d_stage3_qa / d_stage3_noqa:    from b_cotrain, stage 3 for S3 steps with / without the conversation (QA) data
``d_stage3_qa`` is the full three-stage schedule at the largest budget: the embedded default is made from it
(``scripts/ship_default.py``).

Variants run as parallel worker processes (``--parallel``) as soon as their parent checkpoint exists; each
worker trains (resumably: ``--resume auto`` inside its folder, so a re-run after a time limit continues), then
evaluates its final checkpoint on the CPU on the held-out val split (seed 2) into ``<work>/s<seed>/<variant>/
eval.json``. ``--seeds 0,1,2`` repeats the whole graph per seed (model init, sample order; one stage-1 run per
seed) and the table gives the mean and the spread (sample std) over seeds. The step budgets come from the
command line, or with ``--budget-minutes`` from a short calibration run of each stage (seconds per step
measured on this machine, written to ``<work>/plan.json``; a re-run re-uses the plan). ``--time-caps T1,TS,T3``
(seconds) gives every stage-1 / head / stage-3 run a time budget (``StageConfig.time_budget_s``): a run that
would take longer shortens itself, and the table reports the steps each run made.

    python scripts/ablation.py --work /tmp/abl --out OUT --budget-minutes 18 --parallel 6
    python scripts/ablation.py --work /tmp/abl --out OUT --stage1-steps 800 --steps 600 --stage3-steps 800 \
        --seeds 0,1,2 --time-caps 80,80,80 --gpus 1 --train DATA --val VAL

Writes ``ablation.json`` (plan, measured seconds and steps, every run's eval summary, the per-variant mean and
std) and ``ablation.md`` into --out.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HEAD_TASKS = ("region", "temporal", "mask")
# name -> (parent variant, stages trained); the stage overrides come from the plan (``overrides``)
GRAPH = {
    "stage1": ("", ["stage1"]),
    "a_region": ("stage1", ["stage2"]), "a_temporal": ("stage1", ["stage2"]), "a_mask": ("stage1", ["stage2"]),
    "b_cotrain": ("stage1", ["stage2"]),
    "c_full": ("stage1", ["stage2", "stage3"]),
    "d_stage3_qa": ("b_cotrain", ["stage3"]), "d_stage3_noqa": ("b_cotrain", ["stage3"]),
}


def overrides(name: str, plan: dict) -> dict:
    """Stage overrides of variant ``name`` under ``plan`` (steps, batch size, tasks; time budgets with
    ``plan["time_caps"] = [T1, TS, T3]`` seconds)."""
    common = {"batch_size": plan["batch_size"], "save_every": plan.get("save_every", 200), "log_every": 10}
    s, s3 = plan["steps"], plan["stage3_steps"]
    t1, ts, t3 = plan.get("time_caps") or (0.0, 0.0, 0.0)
    if name == "stage1":
        return {"stage1": {"steps": plan["stage1_steps"], "time_budget_s": t1, **common}}
    heads = {"tasks": list(HEAD_TASKS), "task_weights": {}}  # the head tasks alone, sampled by count
    if name.startswith("a_"):
        return {"stage2": {"steps": s, "tasks": [name[2:]], "task_weights": {}, "time_budget_s": ts, **common}}
    if name == "b_cotrain":
        return {"stage2": {"steps": s, **heads, "time_budget_s": ts, **common}}
    if name == "c_full":
        return {"stage2": {"steps": max(1, s // 2), **heads, "time_budget_s": ts / 2, **common},
                "stage3": {"steps": s - max(1, s // 2), "time_budget_s": ts / 2, **common}}
    if name == "d_stage3_qa":
        return {"stage3": {"steps": s3, "time_budget_s": t3, **common}}
    if name == "d_stage3_noqa":
        return {"stage3": {"steps": s3, **heads, "time_budget_s": t3, **common}}
    raise ValueError(f"unknown variant {name!r}; variants: {list(GRAPH)}")


def run_dir(work: Path, name: str, seed: int) -> Path:
    """Folder of variant ``name`` trained with ``seed``."""
    return work / f"s{seed}" / name


def data_dirs(work: Path, plan: dict) -> tuple[Path, Path]:
    return Path(plan.get("train") or work / "data" / "train"), Path(plan.get("val") or work / "data" / "val")


def ensure_data(work: Path, videos: int, val_videos: int, workers: int) -> tuple[Path, Path]:
    train, val = work / "data" / "train", work / "data" / "val"
    for out, n, seed, split in ((train, videos, 1, "train"), (val, val_videos, 2, "val")):
        if not (out / "manifest.json").is_file():
            cmd = [sys.executable, "-m", "runtime.cli", "data", "synth", "--out", str(out), "--videos", str(n),
                   "--seed", str(seed), "--split", split, "--workers", str(workers)]
            subprocess.run(cmd, check=True, cwd=ROOT)
    return train, val


# ------------------------------------------------------------------------------------------------ worker
def run_worker(args) -> int:
    """Train variant ``args.variant`` (resumable), then evaluate it on val into eval.json."""
    from tpo_core.data.synth_tasks import task_samples
    from tpo_core.model import TPOModel
    from tpo_core.train.evaluate import evaluate
    from tpo_core.train.stages import load_train_config
    from tpo_core.train.trainer import train

    work = Path(args.work)
    plan = json.loads((work / "plan.json").read_text())
    name, seed = args.variant, args.seed
    parent, stages = GRAPH[name]
    out = run_dir(work, name, seed)
    final = out / "final"
    train_dir, val_dir = data_dirs(work, plan)
    t0 = time.time()
    if not (final / "model.safetensors").is_file():
        init = run_dir(work, parent, seed) / "final" if parent else None
        cfg = load_train_config(None, preset="tiny", seed=seed, overrides={"stages": overrides(name, plan)})
        results = train(cfg, train_dir, out, stages=stages, resume="auto", init=init, quiet=True,
                        max_minutes=args.max_minutes, loader_workers=plan.get("loader_workers", 0))
        if results and results[-1].interrupted:
            print(f"{name} seed {seed}: stopped by --max-minutes at {results[-1].stage} step {results[-1].steps}")
            return 3
    train_seconds = time.time() - t0
    if not (out / "eval.json").is_file():
        torch_threads(args.threads)
        summary, _ = evaluate(TPOModel.from_pretrained(final), task_samples(val_dir), per_task_limit=plan["per_task"])
        summary["train_seconds_this_run"] = round(train_seconds, 1)
        (out / "eval.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"{name} seed {seed}: done")
    return 0


def torch_threads(n: int) -> None:
    import torch

    torch.set_num_threads(max(1, n))


# ------------------------------------------------------------------------------------------------ planning
def calibrate(work: Path, batch_size: int, steps: int = 24, window: int = 8,
              train_dir: Path | None = None) -> dict[str, float]:
    """Seconds per optimizer step of each stage at ``batch_size`` (one process), measured on a warm clip cache.

    The runs draw from a pool of ``2 * window * batch_size`` samples, so the first window decodes every clip
    the later ones read; the last window's mean is taken. (A cold cache made steps look 3-6x slower on the
    H100, where decoding, not the GPU, dominates the first steps.)
    """
    from tpo_core.data.synth_tasks import task_samples
    from tpo_core.train.stages import load_train_config
    from tpo_core.train.trainer import train

    by_task: dict[str, list] = {}
    for sample in task_samples(train_dir or work / "data" / "train"):
        by_task.setdefault(sample.task, []).append(sample)
    per_task = 2 * window * batch_size // max(1, len(by_task))  # every task in the pool, as in training
    pool = [sample for group in by_task.values() for sample in group[:per_task]]
    out = work / "calibration"
    over = {f"stage{i}": {"steps": steps, "batch_size": batch_size, "log_every": window, "warmup_steps": 0}
            for i in (1, 2, 3)}
    cfg = load_train_config(None, preset="tiny", overrides={"stages": over})
    results = train(cfg, None, out, quiet=True, samples=pool)
    return {r.stage: float(r.history[-1]["seconds_per_step"]) for r in results}


def make_plan(args, work: Path) -> dict:
    path = work / "plan.json"
    if path.is_file():
        return json.loads(path.read_text())
    plan = {"batch_size": args.batch_size, "per_task": args.per_task, "seeds": args.seeds, "videos": args.videos,
            "val_videos": args.val_videos, "parallel": args.parallel, "gpus": args.gpus,
            "loader_workers": args.loader_workers, "time_caps": args.time_caps,
            "train": args.train, "val": args.val}
    if args.budget_minutes:
        sec = calibrate(work, args.batch_size, train_dir=Path(args.train) if args.train else None)
        # critical path: stage1 -> b_cotrain -> d_stage3_qa (+ eval); the other variants run beside it and
        # slow each step down by ``contention``; budget split 30 % / 25 % / 45 %
        avail = 60 * args.budget_minutes - 90  # eval + start-up reserve
        k = args.contention
        plan.update(calibration_s_per_step=sec, budget_minutes=args.budget_minutes, contention=k,
                    stage1_steps=int(0.30 * avail / sec["stage1"]),
                    steps=int(0.25 * avail / (k * sec["stage2"])),
                    stage3_steps=int(0.45 * avail / (k * sec["stage3"])))
    else:
        plan.update(stage1_steps=args.stage1_steps, steps=args.steps, stage3_steps=args.stage3_steps)
    work.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(plan, indent=1) + "\n")
    return plan


# ------------------------------------------------------------------------------------------------ driver
def orchestrate(args, work: Path, plan: dict) -> dict[tuple[str, int], int]:
    """Run every (variant, seed) as a worker process once its parent is final; returns exit codes.

    Workers get ``CUDA_VISIBLE_DEVICES`` from ``plan["gpus"]`` in turn (unset: all visible devices)."""
    jobs = [(n, seed) for seed in plan["seeds"] for n in GRAPH]
    todo = [j for j in jobs if not (run_dir(work, *j) / "eval.json").is_file()]
    running: dict[tuple[str, int], subprocess.Popen] = {}
    codes: dict[tuple[str, int], int] = {j: 0 for j in jobs if j not in todo}
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "PYTHONUNBUFFERED": "1"}
    gpus, started = [g for g in str(plan.get("gpus") or "").split(",") if g], 0
    while todo or running:
        for job, proc in list(running.items()):
            if proc.poll() is not None:
                codes[job] = proc.returncode
                del running[job]
                print(f"[ablation] {job[0]} seed {job[1]} exited {proc.returncode} ({time.strftime('%H:%M:%S')})",
                      flush=True)
        if time.time() > args.deadline:
            for job, proc in running.items():  # past the deadline: stop what still runs, keep what finished
                proc.kill()
                codes[job] = -9
            return codes
        for job in list(todo):
            parent = (GRAPH[job[0]][0], job[1])
            # a child starts as soon as its parent's model is final (the parent may still be evaluating)
            if parent[0] and not (run_dir(work, *parent) / "final" / "train_summary.json").is_file():
                if codes.get(parent, 0) != 0:  # the parent failed or was cut: its children cannot start
                    todo.remove(job)
                continue
            if len(running) >= args.parallel:
                break
            todo.remove(job)
            out = run_dir(work, *job)
            out.mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, __file__, "--variant", job[0], "--seed", str(job[1]), "--work", str(work),
                   "--threads", str(args.threads)]
            if args.max_minutes:
                cmd += ["--max-minutes", str(max(0.2, (args.deadline - time.time()) / 60))]
            job_env = dict(env)
            if gpus:
                job_env["CUDA_VISIBLE_DEVICES"] = gpus[started % len(gpus)]
            started += 1
            log = open(out / "worker.log", "a")
            running[job] = subprocess.Popen(cmd, cwd=ROOT, env=job_env, stdout=log, stderr=subprocess.STDOUT)
            print(f"[ablation] started {job[0]} seed {job[1]} ({time.strftime('%H:%M:%S')})", flush=True)
        time.sleep(1)
    return codes


METRICS = (("routing", ("routing_accuracy",)), ("region Acc@0.5", ("region", "acc@0.5")),
           ("region mIoU", ("region", "mean_iou")), ("temporal R1@0.5", ("temporal", "r1@0.5")),
           ("temporal mIoU", ("temporal", "miou")), ("mask J", ("mask", "J")), ("mask J&F", ("mask", "J&F")),
           ("QA", ("qa", "accuracy")), ("false found", ("negative", "false_found")))


def _get(summary: dict, path: tuple) -> float | None:
    for key in path:
        summary = summary.get(key) if isinstance(summary, dict) else None
    return summary


def aggregate(runs: dict[str, dict[int, dict]]) -> dict[str, dict]:
    """Per variant and metric: mean, sample std (0 for one seed) and the per-seed values, over the seeds run."""
    out = {}
    for name, by_seed in runs.items():
        row = {}
        for label, path in METRICS:
            vals = [v for v in (_get(s, path) for s in by_seed.values()) if v is not None]
            if vals:
                row[label] = {"mean": float(np.mean(vals)), "std": float(np.std(vals, ddof=1)) if len(vals) > 1
                              else 0.0, "values": vals}
        row["seeds"] = sorted(by_seed)
        out[name] = row
    return out


def markdown(agg: dict[str, dict], plan: dict, steps: dict | None = None, baselines: dict | None = None) -> str:
    """The table: per variant the mean +- std over seeds (percent) of every metric, and the steps trained."""
    def cell(row, label):
        m = row.get(label)
        if m is None:
            return "-"
        return f"{100 * m['mean']:.1f}" + (f" ± {100 * m['std']:.1f}" if len(m["values"]) > 1 else "")

    seeds = plan.get("seeds") or [plan.get("seed", 0)]
    caps = plan.get("time_caps")
    lines = [f"Tiny preset, {plan['videos']} synthetic train videos (seed 1), held-out val ({plan['val_videos']} "
             f"videos, seed 2, <= {plan['per_task']} samples per task); batch {plan['batch_size']}; stage 1 "
             f"{plan['stage1_steps']} steps, head budget S = {plan['steps']} steps, stage-3 comparison "
             f"{plan['stage3_steps']} steps" + (f" (time caps {caps} s per run: see the steps column)" if caps
                                                else "") + f"; seeds {seeds}: mean ± std over seeds.", "",
             "| variant | " + " | ".join(label for label, _ in METRICS) + " | steps |",
             "|---|" + "---|" * (len(METRICS) + 1)]
    for name, row in agg.items():
        st = (steps or {}).get(name, "")
        lines.append(f"| {name} | " + " | ".join(cell(row, label) for label, _ in METRICS) + f" | {st} |")
    if baselines:
        lines += ["", "Trivial baselines on the same samples (mean over seeds): " +
                  ", ".join(f"{k} {100 * v:.1f}" for k, v in baselines.items() if v is not None)]
    lines += ["", "a_*: one head trained alone (only its task's samples, S steps); b: heads co-trained (S steps); "
              "c: S/2 stage 2 + S/2 stage 3; d: S3 steps of stage 3 from b, with / without the conversation (QA) "
              "data. false found: share of negative questions (absent objects) answered with a head."]
    return "\n".join(lines) + "\n"


def collect(work: Path, out: Path, plan: dict) -> dict[str, dict]:
    """Read every finished run; write ablation.json (runs, steps, seconds, aggregate) and ablation.md."""
    seeds = plan.get("seeds") or [plan.get("seed", 0)]
    runs: dict[str, dict[int, dict]] = {}
    steps: dict[str, dict] = {}
    seconds: dict[str, dict] = {}
    for name in GRAPH:
        for seed in seeds:
            d = run_dir(work, name, seed)
            if (d / "eval.json").is_file():
                runs.setdefault(name, {})[seed] = json.loads((d / "eval.json").read_text())
            summary = d / "final" / "train_summary.json"
            if summary.is_file():
                recs = json.loads(summary.read_text())
                seconds.setdefault(name, {})[seed] = {r["stage"]: r["seconds"] for r in recs}
                steps.setdefault(name, {})[seed] = {r["stage"]: r["steps"] for r in recs}
    agg = aggregate(runs)
    step_text = {n: "; ".join("s{}: {}".format(seed, "+".join(str(v) for v in st.values()))
                              for seed, st in by.items()) for n, by in steps.items()}
    base = {"mean-box Acc@0.5": [], "whole-video R1@0.5": [], "mean-box mask J": [], "majority QA": []}
    for by_seed in runs.values():
        for s in by_seed.values():
            base["mean-box Acc@0.5"].append(_get(s, ("region", "baseline_mean_box", "acc@0.5")))
            base["whole-video R1@0.5"].append(_get(s, ("temporal", "baseline_whole_video", "r1@0.5")))
            base["mean-box mask J"].append(_get(s, ("mask", "baseline_mean_box", "J")))
            base["majority QA"].append(_get(s, ("qa", "baseline_majority")))
    baselines = {k: (float(np.mean([x for x in v if x is not None])) if any(x is not None for x in v) else None)
                 for k, v in base.items()}
    (out / "ablation.json").write_text(json.dumps({"plan": plan, "train_seconds": seconds, "steps": steps,
                                                   "aggregate": agg, "baselines": baselines,
                                                   "results": {n: {str(k): v for k, v in by.items()}
                                                               for n, by in runs.items()}}, indent=1) + "\n")
    (out / "ablation.md").write_text(markdown(agg, plan, step_text, baselines))
    return runs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.environ.get("OUT", "ablation_out"))
    p.add_argument("--work", default=os.environ.get("WORK", "/tmp/tpo_ablation"))
    p.add_argument("--videos", type=int, default=3000)
    p.add_argument("--val-videos", type=int, default=200)
    p.add_argument("--stage1-steps", type=int, default=800)
    p.add_argument("--steps", type=int, default=600, help="head-training budget S per variant")
    p.add_argument("--stage3-steps", type=int, default=800)
    p.add_argument("--budget-minutes", type=float, help="derive the three budgets from a calibration run")
    p.add_argument("--contention", type=float, default=2.0,
                   help="assumed slow-down of a step while the parallel variants share the GPU (planning only)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--per-task", type=int, default=200, help="val samples per task")
    p.add_argument("--parallel", type=int, default=5, help="variants trained at once")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads per worker")
    p.add_argument("--workers", type=int, default=8, help="data-synthesis processes")
    p.add_argument("--max-minutes", type=float, help="stop (resumably) after this long; re-run to continue")
    p.add_argument("--seeds", type=lambda t: [int(x) for x in t.split(",")], default=[0],
                   help="comma list of training seeds: the whole graph is run once per seed (default 0)")
    p.add_argument("--time-caps", type=lambda t: [float(x) for x in t.split(",")],
                   help="T1,TS,T3: time budget in seconds of each stage-1 / head / stage-3 run (0 = none)")
    p.add_argument("--gpus", default="", help="comma list of CUDA device ids the workers take in turn")
    p.add_argument("--loader-workers", type=int, default=0, help="collation processes per worker (0 = a thread)")
    p.add_argument("--train", help="train split to use instead of generating <work>/data/train")
    p.add_argument("--val", help="held-out split to use instead of generating <work>/data/val")
    p.add_argument("--variant", help=argparse.SUPPRESS)  # worker mode
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)  # worker mode
    args = p.parse_args(argv)
    work = Path(args.work)
    if args.variant:
        return run_worker(args)
    args.deadline = time.time() + 60 * (args.max_minutes or 1e6)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    if not (args.train and args.val):
        args.train, args.val = (str(d) for d in ensure_data(work, args.videos, args.val_videos, args.workers))
    plan = make_plan(args, work)
    print(f"[ablation] plan: {json.dumps(plan)}", flush=True)
    codes = orchestrate(args, work, plan)
    runs = collect(work, out, plan)
    print((out / "ablation.md").read_text())
    missing = [(n, s) for n in GRAPH for s in plan["seeds"] if s not in runs.get(n, {})]
    if missing:
        print(f"[ablation] not finished: {missing} (exit codes {codes}); run again with the same --work")
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
