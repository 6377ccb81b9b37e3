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
evaluates its final checkpoint on the held-out val split (seed 2) into ``<work>/<variant>/eval.json``. The step
budgets come from the command line, or with ``--budget-minutes`` from a short calibration run of each stage
(seconds per step measured on this machine, written to ``<work>/plan.json``; a re-run re-uses the plan).

    python scripts/ablation.py --work /tmp/abl --out OUT --budget-minutes 18 --parallel 6
    python scripts/ablation.py --work /tmp/abl --out OUT --stage1-steps 800 --steps 600 --stage3-steps 800

Writes ``ablation.json`` (plan, measured seconds, every variant's eval summary) and ``ablation.md`` into --out.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

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
    """Stage overrides of variant ``name`` under ``plan`` (steps, batch size, tasks)."""
    common = {"batch_size": plan["batch_size"], "save_every": plan.get("save_every", 200), "log_every": 10}
    s, s3 = plan["steps"], plan["stage3_steps"]
    if name == "stage1":
        return {"stage1": {"steps": plan["stage1_steps"], **common}}
    if name.startswith("a_"):
        return {"stage2": {"steps": s, "tasks": [name[2:]], **common}}
    if name == "b_cotrain":
        return {"stage2": {"steps": s, **common}}
    if name == "c_full":
        return {"stage2": {"steps": max(1, s // 2), **common}, "stage3": {"steps": s - max(1, s // 2), **common}}
    if name == "d_stage3_qa":
        return {"stage3": {"steps": s3, **common}}
    if name == "d_stage3_noqa":
        return {"stage3": {"steps": s3, "tasks": list(HEAD_TASKS), **common}}
    raise ValueError(f"unknown variant {name!r}; variants: {list(GRAPH)}")


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
    name = args.variant
    parent, stages = GRAPH[name]
    out = work / name
    final = out / "final"
    t0 = time.time()
    if not (final / "model.safetensors").is_file():
        init = work / parent / "final" if parent else None
        cfg = load_train_config(None, preset="tiny", seed=plan.get("seed", 0),
                                overrides={"stages": overrides(name, plan)})
        results = train(cfg, work / "data" / "train", out, stages=stages, resume="auto", init=init, quiet=True,
                        max_minutes=args.max_minutes)
        if results and results[-1].interrupted:
            print(f"{name}: stopped by --max-minutes at {results[-1].stage} step {results[-1].steps}; re-run")
            return 3
    train_seconds = time.time() - t0
    if not (out / "eval.json").is_file():
        torch_threads(args.threads)
        summary, _ = evaluate(TPOModel.from_pretrained(final), task_samples(work / "data" / "val"),
                              per_task_limit=plan["per_task"])
        summary["train_seconds_this_run"] = round(train_seconds, 1)
        (out / "eval.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"{name}: done")
    return 0


def torch_threads(n: int) -> None:
    import torch

    torch.set_num_threads(max(1, n))


# ------------------------------------------------------------------------------------------------ planning
def calibrate(work: Path, batch_size: int, steps: int = 24, window: int = 8) -> dict[str, float]:
    """Seconds per optimizer step of each stage at ``batch_size`` (one process), measured on a warm clip cache.

    The runs draw from a pool of ``2 * window * batch_size`` samples, so the first window decodes every clip
    the later ones read; the last window's mean is taken. (A cold cache made steps look 3-6x slower on the
    H100, where decoding, not the GPU, dominates the first steps.)
    """
    from tpo_core.data.synth_tasks import task_samples
    from tpo_core.train.stages import load_train_config
    from tpo_core.train.trainer import train

    by_task: dict[str, list] = {}
    for sample in task_samples(work / "data" / "train"):
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
    plan = {"batch_size": args.batch_size, "per_task": args.per_task, "seed": 0, "videos": args.videos,
            "val_videos": args.val_videos, "parallel": args.parallel}
    if args.budget_minutes:
        sec = calibrate(work, args.batch_size)
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
def orchestrate(args, work: Path) -> dict[str, int]:
    """Run every variant as a worker process once its parent is final; returns exit codes by variant."""
    todo = [n for n in GRAPH if not (work / n / "eval.json").is_file()]
    running: dict[str, subprocess.Popen] = {}
    codes: dict[str, int] = {n: 0 for n in GRAPH if n not in todo}
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "PYTHONUNBUFFERED": "1"}
    while todo or running:
        for name, proc in list(running.items()):
            if proc.poll() is not None:
                codes[name] = proc.returncode
                del running[name]
                print(f"[ablation] {name} exited {proc.returncode} ({time.strftime('%H:%M:%S')})", flush=True)
        for name in list(todo):
            parent = GRAPH[name][0]
            if parent and codes.get(parent) not in (0,):
                if parent in codes:  # the parent failed or was cut: its children cannot start in this run
                    todo.remove(name)
                continue
            if len(running) >= args.parallel:
                break
            todo.remove(name)
            (work / name).mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, __file__, "--variant", name, "--work", str(work), "--threads", str(args.threads)]
            if args.max_minutes:
                cmd += ["--max-minutes", str(max(0.2, (args.deadline - time.time()) / 60))]
            log = open(work / name / "worker.log", "a")
            running[name] = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
            print(f"[ablation] started {name} ({time.strftime('%H:%M:%S')})", flush=True)
        time.sleep(2)
    return codes


def markdown(rows: dict[str, dict], plan: dict) -> str:
    def pct(v):
        return "-" if v is None else f"{100 * v:.1f}"

    lines = [f"Tiny preset, {plan['videos']} synthetic train videos (seed 1), held-out val ({plan['val_videos']} "
             f"videos, seed 2, <= {plan['per_task']} samples per task); batch {plan['batch_size']}; stage 1 "
             f"{plan['stage1_steps']} steps, head budget S = {plan['steps']} steps, stage-3 comparison "
             f"{plan['stage3_steps']} steps.", "",
             "| variant | routing | region Acc@0.5 | region mIoU | temporal R1@0.5 | temporal mIoU | mask J | "
             "mask J&F | QA |", "|---|---|---|---|---|---|---|---|---|"]
    for name, s in rows.items():
        lines.append(f"| {name} | {pct(s['routing_accuracy'])} | {pct(s['region']['acc@0.5'])} | "
                     f"{pct(s['region']['mean_iou'])} | {pct(s['temporal']['r1@0.5'])} | {pct(s['temporal']['miou'])} "
                     f"| {pct(s['mask']['J'])} | {pct(s['mask']['J&F'])} | {pct(s['qa']['accuracy'])} |")
    lines += ["", "a_*: one head trained alone (only its task's samples, S steps); b: heads co-trained (S steps); "
              "c: S/2 stage 2 + S/2 stage 3; d: S3 steps of stage 3 from b, with / without the conversation (QA) "
              "data."]
    return "\n".join(lines) + "\n"


def collect(work: Path, out: Path, plan: dict) -> dict[str, dict]:
    rows = {n: json.loads((work / n / "eval.json").read_text()) for n in GRAPH if (work / n / "eval.json").is_file()}
    seconds = {}
    for n in GRAPH:
        summary = work / n / "final" / "train_summary.json"
        if summary.is_file():
            seconds[n] = {r["stage"]: r["seconds"] for r in json.loads(summary.read_text())}
    (out / "ablation.json").write_text(json.dumps({"plan": plan, "train_seconds": seconds, "results": rows},
                                                  indent=1) + "\n")
    (out / "ablation.md").write_text(markdown(rows, plan))
    return rows


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
    p.add_argument("--variant", help=argparse.SUPPRESS)  # worker mode
    args = p.parse_args(argv)
    work = Path(args.work)
    if args.variant:
        return run_worker(args)
    args.deadline = time.time() + 60 * (args.max_minutes or 1e6)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    ensure_data(work, args.videos, args.val_videos, args.workers)
    plan = make_plan(args, work)
    print(f"[ablation] plan: {json.dumps(plan)}", flush=True)
    codes = orchestrate(args, work)
    rows = collect(work, out, plan)
    print((out / "ablation.md").read_text())
    missing = [n for n in GRAPH if n not in rows]
    if missing:
        print(f"[ablation] not finished: {missing} (exit codes {codes}); run again with the same --work")
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
