"""Small CPU runs that show issue 12's fixes working in the right direction, each against its old setting.

All start from a trained model (default: the embedded default, ``tpo_core/assets/default``, whose vision encoder
already tells colours and shapes apart) and train a few hundred steps with ``tpo_core.train.train`` on a
synthetic train split, then evaluate on a held-out split with ``tpo eval``'s code (metrics beside baselines):

- ``region``: the connector. ``queries`` = the release's Q-Former tokens only (the old tiny connector);
  ``pooled`` = plus 4 x 4 pooled patch tokens per frame with position embeddings (the new tiny connector, its
  new weights initialized fresh). Trains connector, LLM, task tokens and region head on region samples and
  the position questions (vision frozen). Region Acc@0.5 vs the mean-box baseline, position-QA accuracy vs
  the majority answer.
- ``temporal``: the optimizer. ``old`` = Adam eps 1e-5, temporal loss weight 0.05, one global clip (the old
  stage 2); ``new`` = eps 1e-8, weight 1, per-group clipping, 0.1 into the trunk. Trains the temporal head and
  the task tokens on temporal samples (stage 2). R1@0.5 vs the whole-video baseline.
- ``temporal-head``: the same two optimizer settings on a freshly initialized temporal head trained alone on
  cached features of the frozen model (task embedding at ``<temp>``, frame features): fast on a CPU; with one
  parameter group, per-group and global clipping coincide, so ``old`` vs ``new`` is Adam eps 1e-5 at weight
  0.05 vs eps 1e-8 at weight 1.
- ``negative``: LM fine-tuning on all tasks without / with the negative questions (``off`` / ``on``); the
  false-"found" rate on negatives beside the routing accuracy of the positives.
- ``lookup`` (arms ``queries`` / ``pooled``): the look-up the LLM has to learn, in isolation. One attention layer
  whose query is the start model's hidden state at ``<boxes>`` (it names the asked colour and shape) reads
  (a) the start model's 16 Q-Former tokens or (b) the 4 x 4 pooled patch tokens of all 8 frames (the new
  connector's ``SpatialTokens``, fresh) or (c) all 512 ViT tokens (a ceiling: too many for the LLM's
  context), then an MLP gives the box; or (d, arm ``pointer``) the pointer head
  (``tpo_core.modeling.heads.pointer``, the tiny preset's region head) over the same ViT tokens as
  ``[T, 64, Dv]``; trained on cached features (region samples of --train), scored on --val: Acc@0.5 vs the
  mean box.
- ``occupancy`` (arm ``probe``): no training; what a linear read-out of the visual tokens knows about where
  things are. Ridge regression from (a) the start model's Q-Former tokens (the old connector's output),
  (b) the 4 x 4 pooled patch tokens of the labelled frame (what the new connector projects linearly), (c) that
  frame's 8 x 8 ViT tokens, to the 8 x 8 object-occupancy map of the region label frame; val R^2.

    python scripts/probe_fixes.py region --arm pooled --train DATA --val VAL --out OUT --steps 300
    python scripts/probe_fixes.py temporal-head --arm new --train DATA --val VAL --out OUT --steps 1500

Writes ``OUT/<experiment>_<arm>.json`` (settings, seconds, the eval summary) and prints the report.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ARMS = {"region": ("queries", "pooled"), "temporal": ("old", "new"), "temporal-head": ("old", "new"),
        "negative": ("off", "on"), "occupancy": ("probe",),
        "lookup": ("queries", "pooled", "vit", "pointer")}


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


def keep(experiment: str, sample) -> bool:
    """The region experiment's QA samples are the position questions only."""
    from tpo_core.data.synth_tasks import POSITION_QUESTION

    return experiment != "region" or sample.task != "qa" or sample.question.startswith(POSITION_QUESTION[:20])


def stage_for(experiment: str, arm: str, steps: int, batch: int) -> dict:
    common = {"steps": steps, "batch_size": batch, "warmup_steps": 20, "log_every": 10, "apply_lora": False,
              "mask_frames": 2}
    off = {k: 0.0 for k in ("lm", "region", "temporal", "mask_pixel", "mask_object", "mask_distill", "mask_box")}
    if experiment == "region":  # region samples + the position questions (qa, filtered in ``main``)
        return {**common, "tasks": ["region", "qa"], "loss_weights": {**off, "lm": 1.0, "region": 1.0},
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


def cached_temporal_features(model, samples: list, data: str, batch: int = 32) -> list[dict]:
    """Frozen-model inputs of the temporal head for every temporal sample, in batches (task embedding at
    ``<temp>`` [b, D], frame features [b, T, Dv], frame times [b, T], span targets and relevance)."""
    from tpo_core.data.clip_store import ClipStore
    from tpo_core.data.collate import ClipCache, TPOCollator
    from tpo_core.train.objective import TPOObjective, causal_padding_mask

    t = model.config.vision.num_frames
    collate = TPOCollator(model.config, model.prompts, 1, 0, ClipCache(t, store=ClipStore.open(data, t)))
    objective, out = TPOObjective(model, {}), []
    model.eval()
    with torch.no_grad():
        for i in range(0, len(samples), batch):
            b = collate(samples[i:i + batch])
            tokens = model.vision(b.frames)  # [b, T * HW, Dv]
            visual = model.connect(tokens)
            grid = tokens.reshape(tokens.shape[0], t, -1, tokens.shape[-1])
            _, hidden, _ = model.llm(objective._embeddings(b, visual), attention_mask=causal_padding_mask(
                b.attention_mask))
            h = hidden[torch.arange(hidden.shape[0]), b.placeholder_pos]
            out.append({"h": h, "feats": grid.mean(2), "feats_max": grid.amax(2), "times": b.frame_times,
                        "spans": b.temporal_spans, "rel": b.temporal_relevance})
    return out


def save_features(cache: list[dict], path: Path) -> None:
    """The cached batches as one safetensors file (span targets concatenated, with their counts)."""
    from safetensors.torch import save_file

    flat = {}
    for i, c in enumerate(cache):
        for k in ("h", "feats", "feats_max", "times", "rel"):
            flat[f"{i}/{k}"] = c[k].contiguous()
        flat[f"{i}/spans"] = torch.cat(c["spans"]).contiguous()
        flat[f"{i}/counts"] = torch.tensor([len(t) for t in c["spans"]])
    save_file(flat, str(path))


def load_features(path: Path) -> list[dict]:
    from safetensors.torch import load_file

    flat = load_file(str(path))
    out = []
    for i in range(len({k.split("/")[0] for k in flat})):
        c = {k: flat[f"{i}/{k}"] for k in ("h", "feats", "feats_max", "times", "rel")}
        c["spans"] = list(torch.split(flat[f"{i}/spans"], flat[f"{i}/counts"].tolist()))
        out.append(c)
    return out


def train_temporal_head(args, init: Path, arm: str, work: Path) -> tuple[Path, dict]:
    """A fresh temporal head trained alone on cached features; returns the model folder with it, settings."""
    from tpo_core.data.synth_tasks import task_samples
    from tpo_core.model import TPOModel
    from tpo_core.modeling.heads.temporal import TemporalHead
    from tpo_core.modeling.losses import temporal_loss
    from tpo_core.train.schedule import lr_factor

    model = TPOModel.from_pretrained(init)
    samples = [s for s in task_samples(args.train) if s.task == "temporal"]
    cache_file = Path(args.out) / f"temporal_features_{Path(args.train).name}.safetensors"
    if cache_file.is_file():  # the arms share the frozen model's features
        cache = load_features(cache_file)
    else:
        cache = cached_temporal_features(model, samples, args.train)
        save_features(cache, cache_file)
    eps, weight = (1e-5, 0.05) if arm == "old" else (1e-8, 1.0)
    torch.manual_seed(0)
    cfg = model.config
    head = TemporalHead(cfg.temporal, cfg.llm.hidden_size, cfg.vision.embed_dim).train()
    opt = torch.optim.AdamW(head.parameters(), lr=5e-4, eps=eps, weight_decay=0.02)
    gen, log = torch.Generator().manual_seed(0), []
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = 5e-4 * lr_factor(step, args.steps, 20, 0.05)
        c = cache[int(torch.randint(len(cache), (1,), generator=gen))]
        feats = c["feats"] + c["feats_max"] if args.frame_pool == "mean_max" else c["feats"]
        loss = weight * temporal_loss(head(c["h"], feats, c["times"]), c["spans"], c["rel"])["total"]
        opt.zero_grad()
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
        opt.step()
        if step % 50 == 0:
            log.append({"step": step, "loss": loss.item() / weight, "grad_norm": norm.item()})
    model.temporal_head = head.eval()
    if args.frame_pool != model.config.vision.frame_pool:
        model.config.vision.frame_pool = args.frame_pool  # the head was trained on these frame features
    model.save_pretrained(work / "run" / "final")
    return work / "run" / "final", {"adam_eps": eps, "temporal_weight": weight, "steps": args.steps,
                                    "batch": 32, "lr": 5e-4, "clip": 1.0, "frame_pool": args.frame_pool, "log": log}


def occupancy_features(model, root: str) -> dict[str, np.ndarray]:
    """Per video with a region label: features (Q-Former tokens, pooled tokens and ViT tokens of the label frame)
    and the 8 x 8 occupancy of every object at that frame."""
    import cv2
    import torch.nn.functional as F

    from tpo_core.data.clip_store import ClipStore
    from tpo_core.data.collate import ClipCache
    from tpo_core.data.synth_tasks import task_samples
    from tpo_core.data.video import preprocess_frames

    samples = task_samples(root, tasks=("region", "mask"), mask_from_start_only=False)
    segs: dict[str, list] = {}
    for s in samples:
        if s.task == "mask":
            segs.setdefault(s.video, []).append(s.segmentation)
    frame_of = {s.video: s.box_frame for s in samples if s.task == "region"}
    v, t = model.config.vision, model.config.vision.num_frames
    cache, side = ClipCache(t, store=ClipStore.open(root, t)), v.img_size // v.patch_size
    out: dict[str, list] = {"queries": [], "pooled": [], "vit": [], "target": []}
    with torch.no_grad():
        for video, frame in sorted(frame_of.items()):
            clip = cache.get(video)
            slot = [int(i) for i in clip.indices].index(int(frame))
            px = preprocess_frames(clip.frames, v.img_size, v.mean, v.std, mode=v.resize)[None]
            tokens = model.vision(px)  # [1, T * S * S, Dv]
            out["queries"].append(model.connector(tokens)[0, : model.config.qformer.num_queries].flatten().numpy())
            grid = tokens.reshape(t, side, side, -1)[slot]  # [S, S, Dv]
            pooled = grid.reshape(4, side // 4, 4, side // 4, -1).mean(dim=(1, 3))
            out["pooled"].append(F.layer_norm(pooled, pooled.shape[-1:]).flatten().numpy())
            out["vit"].append(grid.flatten().numpy())
            occ = np.zeros(segs[video][0].mask(int(frame)).shape, np.float32)
            for seg in segs[video]:
                occ = np.maximum(occ, seg.mask(int(frame)).astype(np.float32))
            out["target"].append(cv2.resize(occ, (8, 8), interpolation=cv2.INTER_AREA).flatten())
    return {k: np.stack(x) for k, x in out.items()}


def ridge_r2(xtr: np.ndarray, ytr: np.ndarray, xva: np.ndarray, yva: np.ndarray) -> dict:
    """Ridge regression (features standardized on train; lambda picked on the last fifth of train) -> val R^2
    over all outputs (1 - SSE / SST with the train mean)."""
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    xtr, xva = (xtr - mu) / sd, (xva - mu) / sd
    ym = ytr.mean(0)
    cut = int(0.8 * len(xtr))

    def fit(x, y, lam):
        k = x @ x.T + lam * np.eye(len(x))  # dual form: features >> samples
        return x.T @ np.linalg.solve(k, y - ym)

    def r2(w, x, y):
        return 1.0 - float(((x @ w + ym - y) ** 2).sum() / ((y - ym) ** 2).sum())

    lams = [10.0 ** k for k in range(-1, 6)]
    best = max(lams, key=lambda lam: r2(fit(xtr[:cut], ytr[:cut], lam), xtr[cut:], ytr[cut:]))
    return {"val_r2": round(r2(fit(xtr, ytr, best), xva, yva), 4), "lambda": best, "train": len(xtr),
            "val": len(xva), "dims": int(xtr.shape[1])}


def occupancy_probe(args) -> dict:
    from tpo_core.model import TPOModel

    model = TPOModel.from_pretrained(args.start).eval()
    tr, va = occupancy_features(model, args.train), occupancy_features(model, args.val)
    return {name: ridge_r2(tr[name], tr["target"], va[name], va["target"]) for name in ("queries", "pooled", "vit")}


def lookup_features(model, root: str, batch: int = 32) -> dict[str, torch.Tensor]:
    """Region samples: hidden state at ``<boxes>`` [N, D], Q-Former tokens [N, 16, D], ViT tokens [N, T*HW, Dv],
    label boxes [N, 4] (frozen start model)."""
    from tpo_core.data.clip_store import ClipStore
    from tpo_core.data.collate import ClipCache, TPOCollator
    from tpo_core.data.synth_tasks import task_samples
    from tpo_core.train.objective import TPOObjective, causal_padding_mask

    samples = [s for s in task_samples(root) if s.task == "region"]
    t = model.config.vision.num_frames
    collate = TPOCollator(model.config, model.prompts, 1, 0, ClipCache(t, store=ClipStore.open(root, t)))
    objective, out = TPOObjective(model, {}), {"h": [], "queries": [], "vit": [], "box": []}
    model.eval()
    with torch.no_grad():
        for i in range(0, len(samples), batch):
            b = collate(samples[i:i + batch])
            tokens = model.vision(b.frames)
            visual = model.connect(tokens)
            _, hidden, _ = model.llm(objective._embeddings(b, visual), attention_mask=causal_padding_mask(
                b.attention_mask))
            out["h"].append(hidden[torch.arange(hidden.shape[0]), b.placeholder_pos])
            out["queries"].append(visual[:, : model.config.qformer.num_queries])
            out["vit"].append(tokens)
            out["box"].append(b.region_boxes)
    return {k: torch.cat(v) for k, v in out.items()}


class LookupHead(torch.nn.Module):
    """query = h [B, D]; tokens [B, N, Dk] -> one multi-head attention read -> MLP -> box [B, 4]."""

    def __init__(self, d: int, dk: int, spatial=None):
        super().__init__()
        self.spatial = spatial  # SpatialTokens for the pooled arm (ViT tokens -> pooled tokens in LLM width)
        self.q = torch.nn.Linear(d, d)
        self.kv = torch.nn.Linear(dk if spatial is None else d, 2 * d)
        self.attn = torch.nn.MultiheadAttention(d, 4, batch_first=True)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(2 * d, d), torch.nn.ReLU(), torch.nn.Linear(d, 4))

    def forward(self, h: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        x = self.spatial(tokens) if self.spatial is not None else tokens
        k, v = self.kv(x).chunk(2, dim=-1)
        read, _ = self.attn(self.q(h)[:, None], k, v)
        return self.mlp(torch.cat([h, read[:, 0]], dim=-1))


class PointerArm(torch.nn.Module):
    """The pointer head (tiny preset settings) on ViT tokens ``[B, T * P, Dv]`` split per frame slot."""

    def __init__(self, cfg):
        super().__init__()
        from tpo_core.config import PointerConfig, get_preset
        from tpo_core.modeling.heads.pointer import PointerHead

        pc = get_preset("tiny").pointer if cfg.pointer.enabled is False else cfg.pointer
        pc = PointerConfig(enabled=True, dim=pc.dim, num_heads=pc.num_heads, num_layers=pc.num_layers)
        v = cfg.vision
        self.slots = v.num_frames // v.tubelet_size
        self.head = PointerHead(pc, cfg.llm.hidden_size, v.embed_dim, self.slots, v.img_size // v.patch_size)

    def forward(self, h: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        from tpo_core.modeling.heads.pointer import split_patches

        return self.head(h, split_patches(tokens, self.slots))


def cached_lookup_features(model, root: str, out: str) -> dict[str, torch.Tensor]:
    """``lookup_features`` cached as ``OUT/features_<split name>.safetensors``."""
    from safetensors.torch import load_file, save_file

    path = Path(out) / f"features_{Path(root).name}.safetensors"
    if path.is_file():
        return load_file(path)
    feats = {k: v.contiguous() for k, v in lookup_features(model, root).items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(feats, path)
    return feats


def lookup_probe(args) -> dict:
    from tpo_core.model import TPOModel
    from tpo_core.modeling.connector import SpatialTokens
    from tpo_core.modeling.losses import region_loss
    from tpo_core.train.metrics import box_iou
    from tpo_core.train.schedule import lr_factor

    model = TPOModel.from_pretrained(args.start)
    tr, va = cached_lookup_features(model, args.train, args.out), cached_lookup_features(model, args.val, args.out)
    cfg, key = model.config, "queries" if args.arm == "queries" else "vit"
    torch.manual_seed(0)
    d = cfg.llm.hidden_size
    spatial = (SpatialTokens(4, cfg.vision.embed_dim, d, cfg.vision.tokens_per_frame, cfg.vision.num_frames)
               if args.arm == "pooled" else None)
    head = PointerArm(cfg) if args.arm == "pointer" else LookupHead(d, tr[key].shape[-1], spatial)
    t0 = time.time()
    opt = torch.optim.AdamW(head.parameters(), lr=1e-3, eps=1e-8, weight_decay=0.02)
    gen, n = torch.Generator().manual_seed(0), len(tr["h"])
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = 1e-3 * lr_factor(step, args.steps, 50, 0.05)
        idx = torch.randint(n, (args.batch_size,), generator=gen)
        loss = region_loss(head(tr["h"][idx], tr[key][idx]), tr["box"][idx])["total"]
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
        opt.step()
    seconds = time.time() - t0
    with torch.no_grad():
        pred = head.eval()(va["h"], va[key])
    ious = [box_iou(p.tolist(), b.tolist()) for p, b in zip(pred, va["box"])]
    mean = tr["box"].mean(0).tolist()
    base = [box_iou(mean, b.tolist()) for b in va["box"]]
    return {"arm": args.arm, "train": n, "val": len(ious), "steps": args.steps, "batch": args.batch_size,
            "train_seconds": round(seconds, 1),
            "acc@0.5": round(float(np.mean(np.asarray(ious) >= 0.5)), 4), "mean_iou": round(float(np.mean(ious)), 4),
            "mean_box_acc@0.5": round(float(np.mean(np.asarray(base) >= 0.5)), 4),
            "mean_box_iou": round(float(np.mean(base)), 4), "pred_std": pred.std(0).tolist()}


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
    p.add_argument("--frame-pool", choices=("mean", "mean_max"), default="mean",
                   help="temporal-head: the frame features the head is trained and evaluated on")
    p.add_argument("--tag", default="", help="suffix of the output names")
    args = p.parse_args(argv)
    if args.arm not in ARMS[args.experiment]:
        p.error(f"--arm for {args.experiment} is one of {ARMS[args.experiment]}")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    if args.experiment == "lookup":
        result = {"experiment": "lookup", "start": str(args.start), "train_data": str(args.train),
                  "val_data": str(args.val), **lookup_probe(args)}
        out.mkdir(parents=True, exist_ok=True)
        (out / f"lookup_{args.arm}.json").write_text(json.dumps(result, indent=1) + "\n")
        print(json.dumps(result, indent=1))
        return 0
    if args.experiment == "occupancy":
        result = {"experiment": "occupancy", "start": str(args.start), "train": str(args.train), "val": str(args.val),
                  "probes": occupancy_probe(args)}
        out.mkdir(parents=True, exist_ok=True)
        (out / "occupancy_probe.json").write_text(json.dumps(result, indent=1) + "\n")
        print(json.dumps(result["probes"], indent=1))
        return 0
    work = out / f"{args.experiment}_{args.arm}{args.tag}"
    pool = 4 if args.arm == "pooled" else 0 if args.arm == "queries" else None
    init = start_model(Path(args.start), work / "start", pool)
    t0 = time.time()
    if args.experiment == "temporal-head":
        final, stage = train_temporal_head(args, init, args.arm, work)
    else:
        stage = stage_for(args.experiment, args.arm, args.steps, args.batch_size)
        cfg = load_train_config(None, overrides={"stages": {"stage2": stage}})
        pool = [s for s in task_samples(args.train) if keep(args.experiment, s)]
        train(cfg, args.train, work / "run", stages=["stage2"], init=init, cpu=True, quiet=True, samples=pool)
        final = work / "run" / "final"
    seconds = time.time() - t0
    tasks = {"region": ("region", "qa"), "temporal": ("temporal",), "temporal-head": ("temporal",),
             "negative": ("region", "temporal", "mask", "qa", "negative")}[args.experiment]
    samples = [s for s in task_samples(args.val) if s.task in tasks and keep(args.experiment, s)]
    before, _ = evaluate(TPOModel.from_pretrained(init), samples, per_task_limit=args.per_task)
    summary, _ = evaluate(TPOModel.from_pretrained(final), samples, per_task_limit=args.per_task)
    result = {"experiment": args.experiment, "arm": args.arm, "stage": stage, "train_seconds": round(seconds, 1),
              "start": str(args.start), "train": str(args.train), "val": str(args.val), "before": before,
              "after": summary}
    (out / f"{args.experiment}_{args.arm}{args.tag}.json").write_text(json.dumps(result, indent=1) + "\n")
    batch = 32 if args.experiment == "temporal-head" else args.batch_size
    print(f"== {args.experiment} / {args.arm}: {args.steps} steps x {batch} in {seconds:.0f} s")
    print("-- before training\n" + format_report(before))
    print("-- after training\n" + format_report(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
