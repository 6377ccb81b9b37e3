"""Stage configuration: what each TPO training stage trains, on which data, with which losses and rates.

A training config (YAML or JSON, ``configs/train/*.yaml``) is::

    preset: tiny                # model preset for a fresh start (ignored when starting from a checkpoint)
    seed: 0
    stages:
      stage1: {steps: ..., batch_size: ..., lr: {group: rate, ...}, tasks: [...], loss_weights: {...}, ...}
      stage2: {...}
      stage3: {...}

Every ``StageConfig`` field can be given; missing ones take the defaults below. ``lr`` names the trainable
parameter groups (``PARAM_GROUPS``) with their learning rates: a group not listed is frozen.

Every head gets a gradient (the first tiny default's temporal head got none: at loss weight 0.05 its median
gradient, ~1e-5, sat at Adam's eps = 1e-5 and the global clip shrank it 3x more):
- ``adam_eps`` defaults to 1e-8 (AdamW's own default);
- ``clip_mode: group`` clips each parameter group's gradient norm to ``grad_clip`` on its own (``global``: one
  norm over everything, as before), so a large gradient in one group no longer scales the others down;
- ``head_grad_scale``: per head (``region``, ``temporal``, ``mask``), a factor on the gradient its loss sends
  back into the shared model (task embedding, frame features) - the head itself still sees the full
  ``loss_weights`` weight. The tiny recipe gives the temporal loss weight 1 (its head learns) and 0.1 into the
  trunk (its loss is ~4x the others').
- ``time_budget_s`` > 0: after ``BUDGET_PROBE`` steps the stage measures its step time and lowers ``steps`` so
  that it ends within the budget, and plans again at ``REPLAN_AT`` shares of the budget from the step time
  since the probe, up to ``steps`` (the cosine schedule follows the new length; the planned length is saved
  in the checkpoint so a resume keeps it). The first pointer-head default ended its stages after 60 % of
  their budgets: the probe's steps, on a GPU shared with tests, were slower than the rest.

Parameter groups:
- ``vision``: the video encoder; ``connector``: Q-Former + projection.
- ``llm_base``: every base LLM weight (embeddings, blocks, norms, lm_head), not the LoRA adapters.
- ``task_rows``: only the 7 task-token rows of the input embedding and lm_head (a gradient mask keeps the
  base rows fixed; no weight decay). Implied by ``llm_base``.
- ``lora``: the LoRA adapters (``apply_lora: true`` wraps the LLM first).
- ``task_tokens``: ``box_token``, ``temporal_token``, ``track_token`` and the ``<track_box>`` ``loc_encoder``.
- ``region_head``, ``temporal_head``; ``mask_prompt`` (prompt MLP + auxiliary box MLP); ``mask_sam`` (the
  SAM2 parts: image encoder, decoder, memory; frozen in the 7B recipe, trained for the tiny preset because
  no pretrained SAM2 exists at that size).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..data.collate import TASKS

PARAM_GROUPS = ("vision", "connector", "llm_base", "task_rows", "lora", "task_tokens", "region_head",
                "temporal_head", "mask_prompt", "mask_sam")
LOSS_TERMS = ("lm", "region", "temporal", "mask_pixel", "mask_object", "mask_distill", "mask_box", "patch")
STAGE_NAMES = ("stage1", "stage2", "stage3")
HEADS = ("region", "temporal", "mask")
CLIP_MODES = ("group", "global")
BUDGET_PROBE = (10, 30)  # time_budget_s: the step time is measured between these two steps
REPLAN_AT = (0.2, 0.45, 0.7)  # ... and the stage is planned again when these shares of its budget have passed

# Paper weights: region 2*L1 + GIoU/5 (inside region_loss), temporal x 0.05, mask distillation L1 + box L1.
# ``patch``: the dense vision loss (a model with ``vision.patch_classes`` and data with patch labels), off in the
# paper's recipe.
DEFAULT_LOSS_WEIGHTS = {"lm": 1.0, "region": 1.0, "temporal": 0.05, "mask_pixel": 1.0, "mask_object": 0.1,
                        "mask_distill": 1.0, "mask_box": 1.0, "patch": 0.0}


@dataclass
class StageConfig:
    """One stage. ``steps`` optimizer steps of ``batch_size * grad_accum`` samples (per process)."""

    name: str = "stage1"
    steps: int = 100
    batch_size: int = 8
    grad_accum: int = 1
    lr: dict[str, float] = field(default_factory=dict)
    tasks: tuple[str, ...] = TASKS
    task_weights: dict[str, float] = field(default_factory=dict)  # sampling weight per task (default: by count)
    loss_weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_LOSS_WEIGHTS))
    apply_lora: bool = True
    weight_decay: float = 0.02
    adam_eps: float = 1e-8
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    min_lr_ratio: float = 0.05
    grad_clip: float = 1.0
    clip_mode: str = "group"  # "group": each parameter group clipped to grad_clip on its own; "global": one norm
    head_grad_scale: dict[str, float] = field(default_factory=dict)  # head -> factor on its gradient into the trunk
    time_budget_s: float = 0.0  # > 0: lower ``steps`` after BUDGET_PROBE steps so the stage fits this many seconds
    mask_frames: int = 4
    gradient_checkpointing: bool = False  # recompute LLM block activations in backward (7B memory plan)
    save_every: int = 0  # 0 = only at the end of the stage
    log_every: int = 10

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "grad_accum", "mask_frames", "log_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"stage {self.name}: {name} must be a positive int, got {v!r}")
        if self.save_every < 0 or self.warmup_steps < 0:
            raise ValueError(f"stage {self.name}: save_every and warmup_steps must be >= 0")
        bad = set(self.lr) - set(PARAM_GROUPS)
        if bad or not self.lr:
            raise ValueError(f"stage {self.name}: lr names {sorted(bad) or 'no group'}; give at least one of "
                             f"{PARAM_GROUPS} with its learning rate")
        if any(float(v) <= 0 for v in self.lr.values()):
            raise ValueError(f"stage {self.name}: learning rates must be > 0, got {self.lr}")
        self.tasks = tuple(self.tasks)
        bad = set(self.tasks) - set(TASKS)
        if bad or not self.tasks:
            raise ValueError(f"stage {self.name}: tasks {sorted(bad) or 'empty'}; allowed {TASKS}")
        bad = set(self.task_weights) - set(self.tasks)
        if bad:
            raise ValueError(f"stage {self.name}: task_weights for {sorted(bad)}, which are not in tasks")
        weights = dict(DEFAULT_LOSS_WEIGHTS)
        weights.update(self.loss_weights)
        bad = set(weights) - set(LOSS_TERMS)
        if bad:
            raise ValueError(f"stage {self.name}: unknown loss_weights {sorted(bad)}; allowed {LOSS_TERMS}")
        self.loss_weights = {k: float(v) for k, v in weights.items()}
        self.betas = tuple(self.betas)
        if self.clip_mode not in CLIP_MODES:
            raise ValueError(f"stage {self.name}: clip_mode={self.clip_mode!r}; choose one of {CLIP_MODES}")
        bad = set(self.head_grad_scale) - set(HEADS)
        if bad or any(float(v) < 0 for v in self.head_grad_scale.values()):
            raise ValueError(f"stage {self.name}: head_grad_scale {self.head_grad_scale} must map heads of {HEADS} "
                             "to factors >= 0")
        self.head_grad_scale = {k: float(v) for k, v in self.head_grad_scale.items()}
        if not self.adam_eps > 0 or self.grad_clip < 0 or self.time_budget_s < 0:
            raise ValueError(f"stage {self.name}: adam_eps must be > 0, grad_clip and time_budget_s >= 0 (0 = off); "
                             f"got {self.adam_eps}, {self.grad_clip}, {self.time_budget_s}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"stage {self.name}: min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")

    def trainable(self, group: str) -> bool:
        return group in self.lr

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class TrainConfig:
    preset: str = "tiny"
    seed: int = 0
    stages: dict[str, StageConfig] = field(default_factory=dict)

    def __post_init__(self) -> None:
        out = {}
        for name, st in self.stages.items():
            if name not in STAGE_NAMES:
                raise ValueError(f"train config: unknown stage {name!r}; allowed {STAGE_NAMES}")
            out[name] = st if isinstance(st, StageConfig) else StageConfig(**{**st, "name": name})
        self.stages = out

    def stage(self, name: str) -> StageConfig:
        if name not in self.stages:
            raise ValueError(f"train config has no {name!r}; it defines {sorted(self.stages)}")
        return self.stages[name]

    def to_dict(self) -> dict:
        return {"preset": self.preset, "seed": self.seed, "stages": {k: v.to_dict() for k, v in self.stages.items()}}


TINY_LOSS_WEIGHTS = {**DEFAULT_LOSS_WEIGHTS, "temporal": 1.0, "patch": 1.0}
TINY_HEAD_GRAD_SCALE = {"temporal": 0.1}
# Sampling shares of the tiny recipe (by count, generator version 4's train split would be ~45 % QA and ~20 %
# negatives). Stage 2 keeps some QA and negatives: with head tasks alone its connector updates raised the LM loss
# from 0.16 to 0.39, which cost stage 3 its first ~250 steps.
TINY_TASK_WEIGHTS = {"region": 0.13, "temporal": 0.13, "mask": 0.17, "qa": 0.35, "negative": 0.22}
TINY_STAGE2_WEIGHTS = {"region": 0.25, "temporal": 0.25, "mask": 0.3, "qa": 0.12, "negative": 0.08}


def _tiny_stages() -> dict[str, dict]:
    """Defaults for the tiny preset. Nothing at that size is pretrained (random LM, ViT, Q-Former, SAM2), so
    stage 1 also trains the vision encoder, connector and the whole LLM ("LM warm-up + task assignment") and
    already learns to localise: the region loss and the mask head's first-frame box / prompt terms (cheap MLPs
    on the task embedding, no tracking) join the LM loss, so the vision encoder and connector are pushed to
    keep positions from the start. The ``patch`` loss (what each ViT patch shows, from the synthetic data's patch
    labels) supervises the vision encoder densely in stages 1 and 3 (in stage 2, where the encoder is frozen, it is
    only a readout). Stage 2 trains the heads with the connector (the LLM stays frozen); the
    SAM2 parts of the mask head train with the heads; a fifth of its samples are QA and negatives, so the connector
    keeps serving the LM (``TINY_STAGE2_WEIGHTS``). Stages 1 and 3 sample by ``TINY_TASK_WEIGHTS``. The 7B config
    keeps the paper's freezing."""
    head_lr = {"region_head": 1e-3, "temporal_head": 5e-4, "mask_prompt": 1e-3, "mask_sam": 5e-4, "task_tokens": 1e-3}
    heads = {"loss_weights": dict(TINY_LOSS_WEIGHTS), "head_grad_scale": dict(TINY_HEAD_GRAD_SCALE)}
    mix = {"tasks": list(TASKS), "task_weights": dict(TINY_TASK_WEIGHTS)}
    stage1_weights = {k: (1.0 if k in ("lm", "region", "mask_distill", "mask_box", "patch") else 0.0)
                      for k in LOSS_TERMS}
    return {
        "stage1": {"steps": 1500, "batch_size": 64, **mix, "warmup_steps": 50,
                   "lr": {"vision": 5e-4, "connector": 5e-4, "llm_base": 5e-4, "lora": 5e-4, "task_tokens": 1e-3,
                          "region_head": 1e-3, "mask_prompt": 1e-3},
                   "loss_weights": stage1_weights},
        "stage2": {"steps": 600, "batch_size": 64, "tasks": list(TASKS), "task_weights": dict(TINY_STAGE2_WEIGHTS),
                   "warmup_steps": 50,
                   "lr": {"connector": 2e-4, **head_lr}, **heads},
        "stage3": {"steps": 1500, "batch_size": 64, **mix, "warmup_steps": 50,
                   "lr": {"vision": 2e-4, "connector": 2e-4, "llm_base": 2e-4, "lora": 2e-4, **head_lr}, **heads},
    }


def _paper_stages() -> dict[str, dict]:
    """The paper's recipe for the 7B preset (stage-2 rates as logged: 2e-5 for every group)."""
    return {
        "stage1": {"steps": 2000, "batch_size": 4, "grad_accum": 1, "tasks": list(TASKS),
                   "lr": {"lora": 2e-5, "task_rows": 2e-5, "task_tokens": 2e-5},
                   "loss_weights": {k: 0.0 for k in LOSS_TERMS if k != "lm"}},
        "stage2": {"steps": 2000, "batch_size": 4, "tasks": ["region", "temporal", "mask"],
                   "lr": {"region_head": 2e-5, "temporal_head": 2e-5, "mask_prompt": 2e-5, "task_tokens": 2e-5}},
        "stage3": {"steps": 4000, "batch_size": 4, "tasks": list(TASKS),
                   "lr": {g: 2e-5 for g in ("vision", "connector", "lora", "task_rows", "task_tokens",
                                            "region_head", "temporal_head", "mask_prompt")}},
    }


def default_train_config(preset: str = "tiny", seed: int = 0) -> TrainConfig:
    stages = _tiny_stages() if preset == "tiny" else _paper_stages()
    return TrainConfig(preset=preset, seed=seed, stages=stages)


def _deep_update(base: dict, new: dict) -> dict:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict) and k not in ("lr", "head_grad_scale", "task_weights"):
            _deep_update(base[k], v)
        else:
            base[k] = v
    return base


def load_train_config(path: str | Path | None, preset: str = "tiny", seed: int | None = None,
                      overrides: dict | None = None) -> TrainConfig:
    """Defaults for ``preset`` updated by the file at ``path`` (YAML or JSON) and by ``overrides``.

    ``lr``, ``head_grad_scale`` and ``task_weights`` dicts replace the default ones (so a file can freeze a group
    by leaving it out, or go back to sampling by count with ``task_weights: {}``); other nested dicts are merged
    key by key.
    """
    base = default_train_config(preset).to_dict()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"train config {path} does not exist; see configs/train/ for examples")
        text = path.read_text()
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"train config {path} must hold a mapping with 'stages', got {type(data).__name__}")
        unknown = set(data) - {"preset", "seed", "stages"}
        if unknown:
            raise ValueError(f"train config {path}: unknown keys {sorted(unknown)}; allowed: preset, seed, stages")
        if data.get("preset", preset) != preset:
            base = default_train_config(data["preset"]).to_dict()
        _deep_update(base, data)
    if overrides:
        _deep_update(base, overrides)
    if seed is not None:
        base["seed"] = seed
    for name, st in base["stages"].items():
        st["name"] = name
    return TrainConfig(preset=base["preset"], seed=base["seed"], stages=base["stages"])
