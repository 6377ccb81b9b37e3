"""One GPU session for issue 12: retrain the embedded default through all three stages, rerun the co-training
ablation with 3 seeds, ship the default and evaluate it on a fresh held-out split; one tar.gz comes back.

    python scripts/train_gpu_session.py --out "$OUT"                    # 2 x H200, one command, <= 9.5 min
    python scripts/train_gpu_session.py --out /tmp/o --smoke --cpu      # the same path at toy size on a CPU

Timeline (``--budget-s``, default 550 s, counted from the start; every phase has its own deadline):

1. data (parallel processes): train split (``--train-videos``, seed 1, with a clip store of the 8 sampled frames
   so no training process decodes video), the ablation's val split (seed 2) and a fresh held-out split
   (``--heldout-seed``, not used by any training or earlier evaluation);
2. at the same time, on different GPUs:
   - the default (GPU ``--default-gpu``): ``tpo train --stage all`` at ``--batch`` with ``--loader-workers``
     collation processes; each stage has a time budget (``StageConfig.time_budget_s``) sized from the time
     left, so the cosine schedule fits; a hard ``--max-minutes`` stop behind it;
   - the ablation (GPU ``--ablation-gpu``): ``scripts/ablation.py`` over ``--seeds`` (8 variants each, one
     stage-1 run per seed), up to ``--ablation-parallel`` runs sharing the GPU, every run with the same time
     caps (the steps each run made are in the table), each evaluated on the CPU when it ends;
3. ship the default (``scripts/ship_default.py``: LoRA merged, fp16, token check, size <= 15 MB) and evaluate
   the shipped files on the held-out split (``--per-task`` samples per task) in parallel CPU processes;
4. pack ``$OUT/tpo_session.tar.gz`` (<= 16 MB: shipped model, metrics JSONL and loss curves of the three
   stages, eval JSON + report, ablation JSON + table, session log) and ``$OUT/summary.txt``.

Needs: the ``decord`` and ``av`` wheels (the generator writes MP4s with PyAV; the loader reads them with decord),
checked first. Runs from a checkout without ``pip install`` (module entry points: ``python -m
tpo_core.data.synth``, ``python -m tpo_core.train``; the ``tpo`` umbrella needs the installed entry points).
Prints a summary with every target of the issue beside its baseline at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TAR_LIMIT = 16_000_000
HARD_STOP_MARGIN_S = 15.0  # the default run's --max-minutes stop: this much before the end of its window
# The targets of issue 12 (held-out split)
TARGETS = (("task routing", ("routing_accuracy",), ">=", 0.95), ("region Acc@0.5", ("region", "acc@0.5"), ">=", 0.80),
           ("temporal R1@0.5", ("temporal", "r1@0.5"), ">=", 0.70), ("mask J", ("mask", "J"), ">=", 0.70),
           ("QA exact match", ("qa", "accuracy"), ">=", 0.80),
           ("false found (negatives)", ("negative", "false_found"), "<=", 0.05))


class Session:
    """Clock, logs and the record of what ran (``session.json``)."""

    def __init__(self, args):
        self.args, self.t0 = args, time.time()
        self.work, self.out = Path(args.work), Path(args.out)
        self.logs = self.work / "logs"
        for d in (self.work, self.out, self.logs):
            d.mkdir(parents=True, exist_ok=True)
        self.record: dict = {"args": vars(args), "phases": {}, "commands": []}

    def elapsed(self) -> float:
        return time.time() - self.t0

    def left(self) -> float:
        return self.args.budget_s - self.elapsed()

    def say(self, msg: str) -> None:
        print(f"[{self.elapsed():6.1f} s] {msg}", flush=True)

    def start(self, name: str, cmd: list[str], gpu: str | None = None, threads: int = 1) -> subprocess.Popen:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(threads),
               "MKL_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        self.record["commands"].append({"name": name, "cmd": cmd, "gpu": gpu, "at_s": round(self.elapsed(), 1)})
        self.say(f"start {name}: {' '.join(cmd)}" + (f" (CUDA_VISIBLE_DEVICES={gpu})" if gpu is not None else ""))
        log = open(self.logs / f"{name}.log", "w")
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)

    def wait(self, name: str, proc: subprocess.Popen, deadline_s: float) -> int:
        """Wait for ``proc`` until ``deadline_s`` (session seconds), then kill it; returns its exit code."""
        t = time.time()
        try:
            code = proc.wait(timeout=max(1.0, deadline_s - self.elapsed()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            code = -9
            self.say(f"{name}: killed at its deadline ({deadline_s:.0f} s)")
        self.record["phases"][name] = {"exit": code, "waited_s": round(time.time() - t, 1),
                                       "ended_at_s": round(self.elapsed(), 1)}
        self.say(f"{name}: exit {code}")
        return code


def preflight(s: Session) -> dict:
    """The machine, the versions, and the optional video wheels this script needs."""
    import torch
    import transformers

    info = {"python": sys.version.split()[0], "torch": torch.__version__, "transformers": transformers.__version__,
            "cpus": os.cpu_count(), "cuda": torch.cuda.is_available(),
            "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]}
    missing = []
    for mod in ("decord", "av"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        raise SystemExit(f"this session needs the {missing} wheel(s): the synthetic generator writes MP4s with "
                         "PyAV (av) and the loader reads them with decord; install them and run again")
    if not s.args.cpu and len(info["gpus"]) < 1:
        raise SystemExit("no CUDA device is visible; run with --cpu for a CPU smoke run")
    wanted = [int(g) for g in str(s.args.default_gpu).split(",") if g.strip()]
    if not s.args.cpu and max(wanted) >= len(info["gpus"]):
        raise SystemExit(f"--default-gpu {s.args.default_gpu}: only {len(info['gpus'])} GPU(s) are visible "
                         f"(ids 0-{len(info['gpus']) - 1}); name visible GPUs")
    if not s.args.cpu and len(info["gpus"]) < 2 and s.args.ablation_gpu != s.args.default_gpu:
        s.say(f"only {len(info['gpus'])} GPU visible: the ablation shares GPU {s.args.default_gpu} with the default")
        s.args.ablation_gpu = s.args.default_gpu
    shm = shutil.disk_usage("/dev/shm").total if Path("/dev/shm").is_dir() else 0
    info["dev_shm_gb"] = round(shm / 1e9, 1)
    if s.args.loader_workers and shm < 4e9:  # DataLoader workers hand batches over in /dev/shm
        s.say(f"/dev/shm holds {shm / 1e9:.1f} GB: collating on a thread instead of {s.args.loader_workers} "
              "worker processes")
        s.args.loader_workers = 0
    s.record["machine"] = info
    s.say(f"machine: {json.dumps(info)}")
    return info


def make_data(s: Session) -> dict[str, Path]:
    a, cpus = s.args, os.cpu_count() or 2
    data = {"train": s.work / "data" / "train", "val": s.work / "data" / "val",
            "heldout": s.work / "data" / f"heldout_seed{a.heldout_seed}"}
    big = max(1, min(cpus - 4, 60))
    jobs = {"train": (a.train_videos, 1, "train", big, ["--clip-frames", "8"]),
            "val": (a.val_videos, 2, "val", 2, []), "heldout": (a.heldout_videos, a.heldout_seed, "val", 2, [])}
    procs = {}
    for name, (n, seed, split, workers, extra) in jobs.items():
        if (data[name] / "manifest.json").is_file():
            continue
        cmd = [sys.executable, "-m", "tpo_core.data.synth", "--out", str(data[name]), "--videos", str(n),
               "--seed", str(seed), "--split", split, "--workers", str(workers), *extra]
        procs[name] = s.start(f"synth_{name}", cmd)
    for name, proc in procs.items():
        if s.wait(f"synth_{name}", proc, a.budget_s - 120) != 0:
            raise SystemExit(f"data generation failed ({name}); see {s.logs / f'synth_{name}.log'}")
    return data


def default_config(s: Session, window_s: float) -> Path:
    """Stage overrides of the default run: batch, step targets and per-stage time budgets filling ``window_s``."""
    a = s.args
    run = a.stages  # the stages this run trains (all three, or e.g. [3] from --init)
    # the stage budgets end before the hard stop (--max-minutes: the window less HARD_STOP_MARGIN_S, counted from the
    # process start), which also covers the process start-up (imports, model, data index: ~30 s on the H200)
    usable = max(30.0, window_s - HARD_STOP_MARGIN_S - a.startup_s - len(run) * a.stage_overhead_s)
    # the selected stages share the whole window in the proportions of their --stage-shares
    scale = sum(a.stage_shares) / sum(a.stage_shares[i - 1] for i in run)
    steps = (a.steps1, a.steps2, a.steps3)
    stages = {f"stage{i}": {"batch_size": a.batch, "steps": steps[i - 1],
                            "time_budget_s": round(a.stage_shares[i - 1] * scale * usable, 1),
                            "log_every": a.log_every, "save_every": 0,
                            "warmup_steps": min(50, max(1, steps[i - 1] // 10))} for i in run}
    path = s.work / "default_config.json"
    path.write_text(json.dumps({"preset": "tiny", "stages": stages}, indent=1) + "\n")
    s.record["default_config"] = stages
    return path


def start_default(s: Session, data: dict, deadline_s: float) -> subprocess.Popen:
    a = s.args
    window = deadline_s - s.elapsed()
    cfg = default_config(s, window)
    gpus = [g for g in str(a.default_gpu).split(",") if g.strip()]
    # several GPUs: DDP through Accelerate (one process per GPU, each with --batch and its own loader workers)
    launch = ([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(len(gpus)),
               "--num_machines", "1", "--mixed_precision", "bf16", "--dynamo_backend", "no"]
              if len(gpus) > 1 and not a.cpu else [sys.executable])
    stage_arg = "all" if a.stages == [1, 2, 3] else ",".join(map(str, a.stages))
    cmd = [*launch, "-m", "tpo_core.train", "--preset", "tiny", "--stage", stage_arg, "--config", str(cfg),
           "--data", str(data["train"]), "--out", str(s.work / "default"), "--quiet", "--seed", str(a.default_seed),
           "--loader-workers", str(a.loader_workers), "--max-minutes",
           f"{max(0.5, window - HARD_STOP_MARGIN_S) / 60:.3f}"]
    if a.init:
        cmd += ["--init", a.init]
    if a.cpu:
        cmd.append("--cpu")
    return s.start("default_train", cmd, None if a.cpu else a.default_gpu, threads=a.default_threads)


def start_ablation(s: Session, data: dict, deadline_s: float) -> subprocess.Popen:
    a = s.args
    window = deadline_s - s.elapsed()
    # critical path: stage 1 -> b_cotrain -> d_stage3_* (+ start-ups and the last eval); the head phase runs 15
    # processes at once on one GPU, so it gets the largest share
    caps = [max(5.0, share * (window - a.ablation_reserve_s)) for share in a.ablation_shares]
    cmd = [sys.executable, str(ROOT / "scripts" / "ablation.py"), "--work", str(s.work / "ablation"),
           "--out", str(s.work / "ablation_out"), "--train", str(data["train"]), "--val", str(data["val"]),
           "--videos", str(a.train_videos), "--val-videos", str(a.val_videos), "--seeds", a.seeds,
           "--stage1-steps", str(a.ablation_steps[0]), "--steps", str(a.ablation_steps[1]),
           "--stage3-steps", str(a.ablation_steps[2]), "--time-caps", ",".join(f"{c:.1f}" for c in caps),
           "--batch-size", str(a.ablation_batch), "--per-task", str(a.ablation_per_task),
           "--parallel", str(a.ablation_parallel), "--threads", "1", "--max-minutes", f"{window / 60:.3f}"]
    if not a.cpu:
        cmd += ["--gpus", a.ablation_gpu]
    s.record["ablation_time_caps_s"] = [round(c, 1) for c in caps]
    return s.start("ablation", cmd)


def trained_model(work: Path) -> Path | None:
    """The default run's final model, else (a run cut by its deadline) the latest stage model or checkpoint."""
    run = work / "default"
    candidates = [run / "final"]
    for st in ("stage3", "stage2", "stage1"):
        candidates += [run / st, *sorted((run / st / "checkpoints").glob("step_*"), reverse=True)]
    return next((d for d in candidates if (d / "model.safetensors").is_file()), None)


def ship_and_eval(s: Session, data: dict) -> dict | None:
    a = s.args
    src = trained_model(s.work)
    if src is None:
        s.say("no trained default model to ship")
        return None
    s.record["shipped_from"] = str(src)
    shipped = s.work / "shipped"
    shutil.rmtree(shipped, ignore_errors=True)
    code = s.wait("ship", s.start("ship", [sys.executable, str(ROOT / "scripts" / "ship_default.py"), str(src),
                                           str(shipped), "--data", str(data["heldout"]), "--samples", "24"]),
                  a.budget_s - 40)
    model_dir = shipped if (shipped / "model.safetensors").is_file() else src
    if code != 0:
        s.say(f"ship_default exited {code} (size or merge check, see logs/ship.log); evaluating {model_dir}")
    from tpo_core.data.synth_tasks import task_samples
    from tpo_core.train.evaluate import evaluate_parallel, format_report

    t = time.time()
    workers = max(1, min(a.eval_workers, (os.cpu_count() or 2) - 1))
    summary, records = evaluate_parallel(model_dir, task_samples(data["heldout"]), workers,
                                         per_task_limit=a.per_task)
    summary.update(checkpoint=str(model_dir), data=str(data["heldout"]), heldout_seed=a.heldout_seed)
    from tpo_core.model import TPOModel
    from tpo_core.train.probes import patch_probe

    summary["vision_probe"] = patch_probe(TPOModel.from_pretrained(model_dir), data["heldout"])
    (s.work / "eval_heldout.json").write_text(json.dumps({"summary": summary, "samples": records}, indent=1) + "\n")
    report = format_report(summary)
    (s.work / "eval_heldout.txt").write_text(report + "\n")
    s.record["phases"]["eval_heldout"] = {"seconds": round(time.time() - t, 1), "workers": workers}
    s.say("held-out evaluation done\n" + report)
    return summary


def _get(d: dict, path: tuple):
    for k in path:
        d = d.get(k) if isinstance(d, dict) else None
    return d


def target_lines(summary: dict | None) -> list[str]:
    if summary is None:
        return ["no held-out evaluation (no trained model)"]
    lines = []
    for label, path, op, goal in TARGETS:
        v = _get(summary, path)
        ok = v is not None and (v >= goal if op == ">=" else v <= goal)
        lines.append(f"{'MET ' if ok else 'MISS'} {label:24s} {'n/a' if v is None else f'{100 * v:5.1f} %'} "
                     f"(target {op} {100 * goal:.0f} %)")
    t = summary["temporal"]
    base = t["baseline_whole_video"]["r1@0.5"]
    gap = None if t["r1@0.5"] is None or base is None else t["r1@0.5"] - base
    lines.append(f"{'MET ' if gap is not None and gap >= 0.10 else 'MISS'} temporal above whole video "
                 f"{'n/a' if gap is None else f'{100 * gap:+5.1f} points'} (target >= +10; baseline R1@0.5 "
                 f"{100 * (base or 0):.1f} %)")
    r, m, q = summary["region"], summary["mask"], summary["qa"]
    lines.append(f"     baselines: region mean box Acc@0.5 {100 * (r['baseline_mean_box']['acc@0.5'] or 0):.1f} %, "
                 f"mask mean box J {100 * (m['baseline_mean_box']['J'] or 0):.1f} %, QA majority "
                 f"{100 * (q.get('baseline_majority') or 0):.1f} %")
    lines += [f"     FLAG {f}" for f in summary.get("diagnostics", {}).get("flags", [])]
    from tpo_core.train.probes import format_probe

    probe = format_probe(summary.get("vision_probe"))
    lines += [f"     {probe}"] if probe else []
    return lines


def _copy(src: Path, dst: Path) -> None:
    if src.is_file():
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)


def pack(s: Session, summary_text: str) -> Path:
    """Stage every result file under one folder and tar it (<= 16 MB: drops plots, then per-sample records)."""
    stage = s.work / "pack" / "tpo_session"
    shutil.rmtree(stage.parent, ignore_errors=True)
    stage.mkdir(parents=True)
    w = s.work
    for f in (w / "shipped").glob("*"):
        _copy(f, stage / "shipped" / f.name)
    for st in ("stage1", "stage2", "stage3"):
        for name in ("metrics.jsonl", "loss_curve.png"):
            _copy(w / "default" / st / name, stage / "default" / st / name)
    for name in ("train_config.json", "final/train_summary.json"):
        _copy(w / "default" / name, stage / "default" / Path(name).name)
    for name in ("eval_heldout.json", "eval_heldout.txt", "default_config.json"):
        _copy(w / name, stage / name)
    for name in ("ablation.json", "ablation.md"):
        _copy(w / "ablation_out" / name, stage / "ablation" / name)
    for log in sorted(s.logs.glob("*.log")):  # the tail of each log
        text = log.read_bytes()[-200_000:]
        (stage / "logs").mkdir(exist_ok=True)
        (stage / "logs" / log.name).write_bytes(text)
    for log in sorted((w / "ablation").glob("s*/*/worker.log")):
        dst = stage / "logs" / "ablation" / f"{log.parent.parent.name}_{log.parent.name}.log"
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(log.read_bytes()[-20_000:])
    (stage / "summary.txt").write_text(summary_text)
    (stage / "session.json").write_text(json.dumps(s.record, indent=1, default=str) + "\n")
    out = s.out / "tpo_session.tar.gz"
    for drop in ((), ("*.png",), ("*.png", "eval_heldout.json")):
        for pattern in drop:
            for f in stage.rglob(pattern):
                f.unlink()
        with tarfile.open(out, "w:gz") as tar:
            tar.add(stage, arcname="tpo_session")
        if out.stat().st_size <= TAR_LIMIT:
            break
    (s.out / "summary.txt").write_text(summary_text)
    return out


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.environ.get("OUT"), help="where the tar.gz and summary go (default $OUT)")
    p.add_argument("--work", default="/tmp/tpo_session", help="data, checkpoints and logs (stays on the machine)")
    p.add_argument("--budget-s", type=float, default=550.0, help="the whole session, seconds")
    p.add_argument("--train-videos", type=int, default=3000)
    p.add_argument("--val-videos", type=int, default=200, help="the ablation's val split (seed 2)")
    p.add_argument("--heldout-videos", type=int, default=200)
    p.add_argument("--heldout-seed", type=int, default=20261, help="the fresh held-out split's seed")
    p.add_argument("--per-task", type=int, default=200, help="held-out samples per task for the default")
    p.add_argument("--batch", type=int, default=128, help="the default run's batch size")
    p.add_argument("--steps1", type=int, default=6000, help="step target of stage 1 (the time budget cuts it)")
    p.add_argument("--steps2", type=int, default=3000)
    p.add_argument("--steps3", type=int, default=6000)
    p.add_argument("--stage-shares", type=lambda t: [float(x) for x in t.split(",")], default=[0.36, 0.16, 0.48],
                   help="shares of the default's training time for stages 1, 2, 3 (the time budgets)")
    p.add_argument("--stages", type=lambda t: sorted({int(x) for x in t.split(",")}), default=[1, 2, 3],
                   help="the default's stages, e.g. 3 (with --init): the selected stages share the training time in "
                        "the proportions of --stage-shares")
    p.add_argument("--init", help="start the default from this model folder (weights only, e.g. a previous "
                                  "session's shipped/); needed when --stages leaves out stage 1")
    p.add_argument("--stage-overhead-s", type=float, default=12.0, help="per stage: start-up, saving, plots")
    p.add_argument("--startup-s", type=float, default=30.0,
                   help="the training process's start-up before its first stage (2026-12-01: a one-stage run whose "
                        "budget left no room for it was stopped by --max-minutes 24 steps before its schedule's end)")
    p.add_argument("--reserve-s", type=float, default=110.0, help="after training: ship, eval, packing")
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--loader-workers", type=int, default=6)
    p.add_argument("--default-threads", type=int, default=2)
    p.add_argument("--default-seed", type=int, default=0)
    p.add_argument("--default-gpu", default="0",
                   help="GPU(s) of the default run; a comma list (e.g. 0,1) trains under DDP, --batch per GPU")
    p.add_argument("--ablation-gpu", default="1")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--ablation-batch", type=int, default=128,
                   help="per step; the runs share one GPU and a step costs about the same at 64 or 128")
    p.add_argument("--ablation-shares", type=lambda t: [float(x) for x in t.split(",")], default=[0.3, 0.4, 0.3],
                   help="shares of the ablation's time for the stage-1, head and stage-3 runs")
    p.add_argument("--ablation-steps", type=lambda t: [int(x) for x in t.split(",")], default=[4000, 3000, 3000],
                   help="S1,S,S3 step targets (the time caps cut them; the table shows the steps run)")
    p.add_argument("--ablation-parallel", type=int, default=15)
    p.add_argument("--ablation-per-task", type=int, default=60)
    p.add_argument("--ablation-reserve-s", type=float, default=220.0,
                   help="start-ups and the evals after each phase (130 s left the stage-3 runs unfinished with 15 "
                        "runs evaluating on shared cores, 2026-12-01)")
    p.add_argument("--eval-workers", type=int, default=24)
    p.add_argument("--skip-ablation", action="store_true")
    p.add_argument("--cpu", action="store_true", help="no GPU (smoke runs)")
    p.add_argument("--smoke", action="store_true", help="toy sizes: checks the whole path in a few CPU minutes")
    args = p.parse_args(argv)
    if not args.out:
        p.error("--out is required (or set $OUT)")
    if len(args.stage_shares) != 3 or min(args.stage_shares) <= 0 or sum(args.stage_shares) > 1.0 + 1e-6:
        p.error(f"--stage-shares takes three positive shares summing to at most 1, got {args.stage_shares}")
    if not args.stages or not set(args.stages) <= {1, 2, 3}:
        p.error(f"--stages takes stage numbers 1-3 separated by commas, got {args.stages}")
    if 1 not in args.stages and not args.init:
        p.error("--stages without stage 1 continues a trained model: pass --init <model folder>")
    if args.init and not (Path(args.init) / "model.safetensors").is_file():
        p.error(f"--init {args.init}: no model.safetensors there; pass a model folder (e.g. <out>/final or shipped/)")
    if args.smoke:
        args.train_videos, args.val_videos, args.heldout_videos, args.per_task = 12, 4, 4, 2
        args.steps1 = args.steps2 = args.steps3 = 2
        args.batch, args.ablation_batch, args.ablation_steps = 2, 2, [2, 2, 2]
        args.ablation_per_task, args.seeds, args.loader_workers, args.eval_workers = 1, "0,1", 1, 2
        args.log_every, args.ablation_parallel, args.stage_overhead_s = 1, 4, 5.0
    return args


def main(argv: list[str] | None = None) -> int:
    s = Session(parse(argv))
    a = s.args
    preflight(s)
    data = make_data(s)
    s.record["phases"]["data_done_at_s"] = round(s.elapsed(), 1)
    train_deadline = a.budget_s - a.reserve_s
    default = start_default(s, data, train_deadline)
    ablation = None if a.skip_ablation else start_ablation(s, data, a.budget_s - 45)
    s.wait("default_train", default, train_deadline + 10)
    summary = ship_and_eval(s, data)
    if ablation is not None:
        s.wait("ablation", ablation, a.budget_s - 35)
    lines = [f"issue 12 GPU session: {s.elapsed():.0f} s; machine {s.record['machine']}",
             f"default: shipped from {s.record.get('shipped_from')}; held-out split seed {a.heldout_seed} "
             f"({a.heldout_videos} videos, <= {a.per_task} samples per task)", *target_lines(summary)]
    ship_report = s.work / "shipped" / "ship_report.json"
    if ship_report.is_file():
        lines.append(f"ship report: {ship_report.read_text().strip()}")
    md = s.work / "ablation_out" / "ablation.md"
    lines += ["", "ablation (mean ± std over seeds):", md.read_text() if md.is_file() else "(no ablation table)"]
    text = "\n".join(lines) + "\n"
    tar = pack(s, text)
    print(text)
    print(f"wrote {tar} ({tar.stat().st_size / 1e6:.1f} MB) in {s.elapsed():.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
