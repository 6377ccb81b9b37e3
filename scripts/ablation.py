"""Small-scale ablation for the issue's claim table (tiny preset, synthetic data, one step budget).

Variants (all from one shared stage-1 checkpoint, the same data and the same number of head-training steps S):
  a_region / a_temporal / a_mask: stage 2 trained on that one task only (one head alone)
  b_cotrain:                      stage 2 on all three tasks (heads co-trained)
  c_full:                         stage 2 for S/2 + stage 3 (joint, conversation mixed in) for S/2
  d_stage3_qa / d_stage3_noqa:    from b_cotrain, stage 3 for S3 steps with vs without the conversation data
Each variant is evaluated on the held-out val split; the script writes ``ablation.json`` and ``ablation.md``
into $OUT (or --out). Variants already finished in --work are reused, so the script can be re-run after a
time limit cut it short.

    OUT=/dir python scripts/ablation.py --videos 1500 --stage1-steps 800 --steps 1200 --stage3-steps 600
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


def ensure_data(work: Path, videos: int, val_videos: int, workers: int) -> tuple[Path, Path]:
    train, val = work / "data" / "train", work / "data" / "val"
    for out, n, seed, split in ((train, videos, 1, "train"), (val, val_videos, 2, "val")):
        if not (out / "manifest.json").is_file():
            cmd = [sys.executable, "-m", "tpo_core.cli", "data", "synth", "--out", str(out), "--videos", str(n),
                   "--seed", str(seed), "--split", split, "--workers", str(workers)]
            subprocess.run(cmd, check=True, cwd=ROOT)
    return train, val


def run_variant(name: str, work: Path, samples, overrides: dict, stages: list[str], init: Path | None,
                deadline: float | None) -> Path | None:
    """Train one variant into work/<name>; returns its final checkpoint (None when cut by the deadline)."""
    from tpo_core.train.stages import load_train_config
    from tpo_core.train.trainer import train

    out = work / name
    if (out / "final" / "model.safetensors").is_file():
        return out / "final"
    minutes = None if deadline is None else max(0.1, (deadline - time.time()) / 60)
    cfg = load_train_config(None, preset="tiny", overrides={"stages": overrides})
    results = train(cfg, None, out, stages=stages, resume="auto", init=init, quiet=True, samples=samples,
                    max_minutes=minutes)
    if results and results[-1].interrupted:
        return None
    return out / "final"


def evaluate_variant(ckpt: Path, val_samples, per_task: int, cache_file: Path) -> dict:
    from tpo_core.model import TPOModel
    from tpo_core.train.evaluate import evaluate

    if cache_file.is_file():
        return json.loads(cache_file.read_text())
    summary, _ = evaluate(TPOModel.from_pretrained(ckpt), val_samples, per_task_limit=per_task)
    cache_file.write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def variants(args) -> list[tuple[str, dict, list[str], str]]:
    """(name, stage overrides, stages, init variant) in run order; init 'stage1' = the shared stage-1 run."""
    s, half = args.steps, max(1, args.steps // 2)
    common = {"batch_size": args.batch_size, "save_every": 0}
    out = [("stage1", {"stage1": {"steps": args.stage1_steps, **common}}, ["stage1"], "")]
    for task in HEAD_TASKS:
        out.append((f"a_{task}", {"stage2": {"steps": s, "tasks": [task], **common}}, ["stage2"], "stage1"))
    out.append(("b_cotrain", {"stage2": {"steps": s, **common}}, ["stage2"], "stage1"))
    out.append(("c_full", {"stage2": {"steps": half, **common}, "stage3": {"steps": s - half, **common}},
                ["stage2", "stage3"], "stage1"))
    out.append(("d_stage3_qa", {"stage3": {"steps": args.stage3_steps, **common}}, ["stage3"], "b_cotrain"))
    out.append(("d_stage3_noqa", {"stage3": {"steps": args.stage3_steps, "tasks": list(HEAD_TASKS), **common}},
                ["stage3"], "b_cotrain"))
    return out


def markdown(rows: dict[str, dict], args) -> str:
    def pct(v):
        return "-" if v is None else f"{100 * v:.1f}"

    lines = [f"Tiny preset, {args.videos} synthetic train videos, held-out val ({args.val_videos} videos, "
             f"<= {args.per_task} samples per task); stage 1 {args.stage1_steps} steps, head budget S = "
             f"{args.steps} steps, stage-3 comparison {args.stage3_steps} steps, batch {args.batch_size}.", "",
             "| variant | routing | region Acc@0.5 | region mIoU | temporal R1@0.5 | temporal mIoU | mask J | mask J&F "
             "| QA |", "|---|---|---|---|---|---|---|---|---|"]
    for name, s in rows.items():
        lines.append(f"| {name} | {pct(s['routing_accuracy'])} | {pct(s['region']['acc@0.5'])} | "
                     f"{pct(s['region']['mean_iou'])} | {pct(s['temporal']['r1@0.5'])} | {pct(s['temporal']['miou'])} "
                     f"| {pct(s['mask']['J'])} | {pct(s['mask']['J&F'])} | {pct(s['qa']['accuracy'])} |")
    lines += ["", "a_*: one head trained alone (only its task's samples, same S steps); b: heads co-trained; "
              "c: S/2 stage 2 + S/2 stage 3; d: stage 3 from b with / without the conversation (QA) data."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.environ.get("OUT", "ablation_out"))
    p.add_argument("--work", default=os.environ.get("WORK", "/tmp/tpo_ablation"))
    p.add_argument("--videos", type=int, default=1500)
    p.add_argument("--val-videos", type=int, default=150)
    p.add_argument("--stage1-steps", type=int, default=800)
    p.add_argument("--steps", type=int, default=1200, help="head-training budget S per variant")
    p.add_argument("--stage3-steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--per-task", type=int, default=150, help="val samples per task")
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--max-minutes", type=float, help="stop (resumably) after this long; re-run to continue")
    args = p.parse_args(argv)
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    deadline = None if args.max_minutes is None else time.time() + 60 * args.max_minutes
    train_dir, val_dir = ensure_data(work, args.videos, args.val_videos, args.workers)
    from tpo_core.data.synth_tasks import task_samples

    samples, val_samples = task_samples(train_dir), task_samples(val_dir)
    rows: dict[str, dict] = {}
    for name, over, stages, init in variants(args):
        init_path = work / init / "final" if init else None
        ckpt = run_variant(name, work, samples, over, stages, init_path, deadline)
        if ckpt is None:
            print(f"time budget reached during {name}; run the script again to continue")
            break
        rows[name] = evaluate_variant(ckpt, val_samples, args.per_task, work / name / "eval.json")
        print(f"{name}: {json.dumps({k: rows[name][k] for k in ('routing_accuracy', 'region', 'temporal')})}")
    (out / "ablation.json").write_text(json.dumps({"args": vars(args), "results": rows}, indent=1) + "\n")
    (out / "ablation.md").write_text(markdown(rows, args))
    print((out / "ablation.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
