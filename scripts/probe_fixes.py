"""Small CPU runs that show issue 12's fixes working in the right direction, each against its old setting.

All start from a trained model (default: the embedded default, ``tpo_core/assets/default``, whose vision encoder
already tells colours and shapes apart) and train a few hundred steps with ``tpo_core.train.train`` on a
synthetic train split, then evaluate on a held-out split with ``tpo eval``'s code (metrics beside baselines):

- ``region``: the connector. ``queries`` = the release's Q-Former tokens only (the old tiny connector);
  ``pooled`` = plus 4 x 4 pooled patch tokens per frame with position embeddings (the new tiny connector, its
  new weights initialized fresh). Trains connector, LLM, task tokens and region head on region samples
  (vision frozen). Region Acc@0.5 vs the mean-box baseline.
- ``temporal``: the optimizer. ``old`` = Adam eps 1e-5, temporal loss weight 0.05, one global clip (the old
  stage 2); ``new`` = eps 1e-8, weight 1, per-group clipping, 0.1 into the trunk. Trains the temporal head and
  the task tokens on temporal samples (stage 2). R1@0.5 vs the whole-video baseline.
- ``negative``: LM fine-tuning on all tasks without / with the negative questions (``off`` / ``on``); the
  false-"found" rate on negatives beside the routing accuracy of the positives.

    python scripts/probe_fixes.py region --arm pooled --train DATA --val VAL --out OUT --steps 300

Writes ``OUT/<experiment>_<arm>.json`` (settings, seconds, the eval summary) and prints the report.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ARMS = {"region": ("queries", "pooled"), "temporal": ("old", "new"), "negative": ("off", "on")}


def start_model(src: Path, out: Path, spatial_pool: int | None):
    """The model at ``src`` (optionally with ``spatial_pool`` pooled tokens, new weights fresh), saved to ``out``."""
    from safetensors.torch import load_file

    from tpo_core.config import TPOConfig
    from tpo_core.model import TPOModel

    if spatial_pool is None:
        return src
    cfg = TPOConfig.from_json(src / "config.json")
    cfg.qformer = dataclasses.replace(cfg.qformer, spatial_pool=spatial_pool)
    model = TPOModel.from_config(cfg, seed=0)
    state = load_file(str(src / "model.safetensors"))
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    assert not unexpected and all(k.startswith("connector.spatial.") for k in missing), (missing, unexpected)
    model.save_pretrained(out)
    return out


def stage_for(experiment: str, arm: str, steps: int, batch: int) -> dict:
    common = {"steps": steps, "batch_size": batch, "warmup_steps": 20, "log_every": 10, "apply_lora": False,
              "mask_frames": 2}
    off = {k: 0.0 for k in ("lm", "region", "temporal", "mask_pixel", "mask_object", "mask_distill", "mask_box")}
    if experiment == "region":
        return {**common, "tasks": ["region"], "loss_weights": {**off, "lm": 1.0, "region": 1.0},
                "lr": {"connector": 5e-4, "llm_base": 5e-4, "task_tokens": 1e-3, "region_head": 1e-3}}
    if experiment == "temporal":
        lr = {"temporal_head": 5e-4, "task_tokens": 1e-3}
        if arm == "old":
            return {**common, "tasks": ["temporal"], "lr": lr, "adam_eps": 1e-5, "clip_mode": "global",
                    "loss_weights": {**off, "temporal": 0.05}}
        return {**common, "tasks": ["temporal"], "lr": lr, "adam_eps": 1e-8, "clip_mode": "group",
                "loss_weights": {**off, "temporal": 1.0}, "head_grad_scale": {"temporal": 0.1}}
    tasks = ["region", "temporal", "mask", "qa"] + (["negative"] if arm == "on" else [])
    return {**common, "tasks": tasks, "loss_weights": {**off, "lm": 1.0},
            "lr": {"connector": 3e-4, "llm_base": 3e-4, "task_tokens": 1e-3}}


def main(argv: list[str] | None = None) -> int:
    from tpo_core.data.synth_tasks import task_samples
    from tpo_core.model import TPOModel
    from tpo_core.train.evaluate import evaluate, format_report
    from tpo_core.train.stages import load_train_config
    from tpo_core.train.trainer import train

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("experiment", choices=sorted(ARMS))
    p.add_argument("--arm", required=True)
    p.add_argument("--train", required=True, help="train split (tpo data synth --split train)")
    p.add_argument("--val", required=True, help="held-out split (tpo data synth --split val)")
    p.add_argument("--out", required=True)
    p.add_argument("--start", default=str(ROOT / "tpo_core" / "assets" / "default"), help="model to start from")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--per-task", type=int, default=60)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    if args.arm not in ARMS[args.experiment]:
        p.error(f"--arm for {args.experiment} is one of {ARMS[args.experiment]}")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    work = out / f"{args.experiment}_{args.arm}"
    pool = 4 if args.arm == "pooled" else 0 if args.arm == "queries" else None
    init = start_model(Path(args.start), work / "start", pool)
    stage = stage_for(args.experiment, args.arm, args.steps, args.batch_size)
    cfg = load_train_config(None, overrides={"stages": {"stage2": stage}})
    t0 = time.time()
    train(cfg, args.train, work / "run", stages=["stage2"], init=init, cpu=True, quiet=True)
    seconds = time.time() - t0
    tasks = {"region": ("region",), "temporal": ("temporal",), "negative": ("region", "temporal", "mask", "qa",
                                                                            "negative")}[args.experiment]
    samples = [s for s in task_samples(args.val) if s.task in tasks]
    before, _ = evaluate(TPOModel.from_pretrained(init), samples, per_task_limit=args.per_task)
    summary, _ = evaluate(TPOModel.from_pretrained(work / "run" / "final"), samples, per_task_limit=args.per_task)
    result = {"experiment": args.experiment, "arm": args.arm, "stage": stage, "train_seconds": round(seconds, 1),
              "start": str(args.start), "train": str(args.train), "val": str(args.val), "before": before,
              "after": summary}
    (out / f"{args.experiment}_{args.arm}.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"== {args.experiment} / {args.arm}: {args.steps} steps x {args.batch_size} in {seconds:.0f} s")
    print("-- before training\n" + format_report(before))
    print("-- after training\n" + format_report(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
