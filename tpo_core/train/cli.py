"""``tpo train`` and ``tpo eval`` (registered on the top-level ``tpo`` parser by ``add_parsers``).

Multi-GPU: ``accelerate launch --num_processes N -m tpo_core.train --preset ... --stage all ...`` runs the
same arguments as ``tpo train`` under DDP (see docs/training.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

STAGE_CHOICES = {"1": ["stage1"], "2": ["stage2"], "3": ["stage3"], "all": ["stage1", "stage2", "stage3"]}


def parse_stages(text: str) -> list[str]:
    """'1', '2', '3', 'all' or a comma list such as '2,3' -> stage names in order."""
    out: list[str] = []
    for part in text.split(","):
        part = part.strip()
        if part not in STAGE_CHOICES:
            raise argparse.ArgumentTypeError(f"--stage {text!r}: use 1, 2, 3, all or a comma list like 2,3")
        out += [s for s in STAGE_CHOICES[part] if s not in out]
    return sorted(out)


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="tiny", help="model preset for a fresh start: tiny or videochat-tpo-7b")
    p.add_argument("--stage", type=parse_stages, default=parse_stages("all"), help="1, 2, 3, all or e.g. 2,3")
    p.add_argument("--data", required=True, help="dataset folder (`tpo data synth --out DIR`)")
    p.add_argument("--out", required=True, help="output folder: <out>/stageN, <out>/final, metrics, plots")
    p.add_argument("--config", help="train config YAML/JSON (defaults for the preset otherwise; configs/train/)")
    p.add_argument("--resume", help="training checkpoint folder to continue from exactly (optimizer, RNG, data); "
                                    "'auto' = the newest one under --out, or a fresh start if there is none")
    p.add_argument("--max-minutes", type=float, help="stop with a checkpoint after this much wall time "
                                                      "(continue later with --resume auto)")
    p.add_argument("--init", help="start from this model checkpoint (weights only), e.g. <out>/stage1")
    p.add_argument("--steps", type=int, help="override the optimizer steps of every selected stage")
    p.add_argument("--batch-size", type=int, help="override the per-process micro-batch size")
    p.add_argument("--grad-accum", type=int, help="override gradient accumulation")
    p.add_argument("--save-every", type=int, help="override: checkpoint every N steps (0 = stage end only)")
    p.add_argument("--log-every", type=int, help="override: log every N steps")
    p.add_argument("--seed", type=int, help="override the config's seed")
    p.add_argument("--cpu", action="store_true", help="train on the CPU even when a GPU is present")
    p.add_argument("--loader-workers", type=int, default=0,
                   help="collate batches in N worker processes (0 = one background thread)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--eval-data", help="after training, evaluate <out>/final on this dataset folder")
    p.add_argument("--eval-limit", type=int, help="samples per task for --eval-data")


def run_train(args) -> int:
    from .stages import load_train_config
    from .trainer import train

    overrides: dict = {}
    for key, field in (("steps", "steps"), ("batch_size", "batch_size"), ("grad_accum", "grad_accum"),
                       ("save_every", "save_every"), ("log_every", "log_every")):
        value = getattr(args, key)
        if value is not None:
            for st in args.stage:
                overrides.setdefault("stages", {}).setdefault(st, {})[field] = value
    cfg = load_train_config(args.config, preset=args.preset, seed=args.seed, overrides=overrides)
    results = train(cfg, args.data, args.out, stages=args.stage, resume=args.resume, init=args.init,
                    cpu=True if args.cpu else None, quiet=args.quiet, max_minutes=args.max_minutes,
                    loader_workers=args.loader_workers)
    for r in results:
        last = r.history[-1] if r.history else {}
        print(f"{r.stage}: {r.steps} steps in {r.seconds:.1f} s, last loss {last.get('loss', float('nan')):.4f} "
              f"-> {r.checkpoint}")
    if results and results[-1].interrupted:
        print(f"time budget reached: continue with `--resume auto --out {args.out}` ({results[-1].checkpoint})")
        return 0
    if args.eval_data and (Path(args.out) / "final" / "model.safetensors").is_file():
        return _eval_and_report(Path(args.out) / "final", args.eval_data, None, args.eval_limit,
                                Path(args.out) / "eval.json", as_json=False)
    return 0


def _eval_and_report(checkpoint, data, limit, per_task, out_file, as_json: bool, workers: int = 1) -> int:
    from ..checkpoint import EMBEDDED_DEFAULT
    from ..data.synth_tasks import task_samples
    from ..model import load_model
    from .evaluate import evaluate, evaluate_parallel, format_report
    from .probes import mask_prompt_probe, patch_probe, presence_probe

    samples = task_samples(data)
    model = load_model(checkpoint)  # a folder, "embedded" or "untrained-tiny" (as tpo ask / tpo export)
    if workers > 1:  # each worker loads the checkpoint folder itself
        folder = EMBEDDED_DEFAULT if str(checkpoint) == "embedded" else checkpoint
        summary, records = evaluate_parallel(folder, samples, workers, limit=limit, per_task_limit=per_task)
    else:
        summary, records = evaluate(model, samples, limit=limit, per_task_limit=per_task, progress=not as_json)
    summary.update(checkpoint=str(checkpoint), data=str(data))
    summary["vision_probe"] = patch_probe(model, data)
    summary["mask_prompt_probe"] = mask_prompt_probe(model, samples, max_samples=50)
    summary["presence_probe"] = presence_probe(model, samples, per_class=100)
    if out_file:
        Path(out_file).parent.mkdir(parents=True, exist_ok=True)
        Path(out_file).write_text(json.dumps({"summary": summary, "samples": records}, indent=1) + "\n")
    print(json.dumps(summary, indent=2) if as_json else format_report(summary))
    return 0


def run_eval(args) -> int:
    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    return _eval_and_report(args.checkpoint, args.data, args.limit, args.per_task, args.out, args.json, args.workers)


def add_parsers(subparsers) -> None:
    """Register ``train`` and ``eval`` on the ``tpo`` subcommand parser."""
    p = subparsers.add_parser("train", help="three-stage TPO training (task assignment, heads, joint)",
                              description="Train a TPO model stage by stage; see docs/training.md.")
    add_train_arguments(p)
    p.set_defaults(func=run_train)
    e = subparsers.add_parser("eval", help="evaluate a checkpoint: routing, region, temporal, mask, QA metrics",
                              description="Greedy generate per sample; metrics defined in docs/training.md.")
    e.add_argument("--checkpoint", required=True,
                   help="checkpoint folder (e.g. <out>/final), 'embedded' (the shipped default) or 'untrained-tiny'")
    e.add_argument("--data", required=True, help="dataset folder (use a held-out split)")
    e.add_argument("--limit", type=int, help="evaluate at most N samples in total")
    e.add_argument("--per-task", type=int, help="evaluate at most N samples per task")
    e.add_argument("--out", help="also write the summary and per-sample records to this JSON file")
    e.add_argument("--json", action="store_true", help="print the summary as JSON")
    e.add_argument("--workers", type=int, default=1, help="evaluate in N CPU processes (one torch thread each)")
    e.set_defaults(func=run_eval)


def train_main(argv: list[str] | None = None) -> int:
    """Entry of ``python -m tpo_core.train`` (the ``tpo train`` arguments)."""
    p = argparse.ArgumentParser(prog="tpo train", description="Three-stage TPO training")
    add_train_arguments(p)
    return run_train(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(train_main())
