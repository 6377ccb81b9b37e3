"""Parameter groups of a TPOModel, per-stage freezing and the AdamW optimizer built from a ``StageConfig``.

Freezing is explicit: ``apply_freezing`` sets ``requires_grad`` on every parameter (True only in the groups
the stage trains) and, for ``task_rows``, registers gradient hooks that zero the base-vocabulary rows of
the input embedding and lm_head. Call ``remove()`` on the returned handle when the stage ends.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .stages import PARAM_GROUPS, StageConfig


def named_groups(model) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """Every parameter of ``model`` (a TPOModel) in exactly one group; names as in ``model.named_parameters``."""
    llm = model.llm
    base = llm.base_model()
    row_params = {id(base.get_input_embeddings().weight), id(base.get_output_embeddings().weight)}
    groups: dict[str, list] = {g: [] for g in PARAM_GROUPS}
    prefixes = [("vision.", "vision"), ("connector.", "connector"), ("region_head.", "region_head"),
                ("temporal_head.", "temporal_head"), ("mask_head.prompt_mlp.", "mask_prompt"),
                ("mask_head.box_mlp.", "mask_prompt"),
                ("mask_head.pointer.", "mask_prompt"), ("mask_head.", "mask_sam"),
                ("llm.box_token", "task_tokens"), ("llm.temporal_token", "task_tokens"),
                ("llm.track_token", "task_tokens"), ("llm.loc_encoder.", "task_tokens")]
    for name, p in model.named_parameters():
        group = next((g for pre, g in prefixes if name.startswith(pre)), None)
        if group is None:
            if not name.startswith("llm.lm."):
                raise AssertionError(f"parameter {name} belongs to no training group")
            group = "lora" if "lora_" in name else "llm_base"
        groups[group].append((name, p))
    groups["task_rows"] = [(n, p) for n, p in groups["llm_base"] if id(p) in row_params]
    return groups


@dataclass
class FreezeHandle:
    trainable: list[tuple[str, nn.Parameter, str]] = field(default_factory=list)  # (name, param, group)
    row_masked: set[int] = field(default_factory=set)  # ids of params whose base rows are masked
    hooks: list = field(default_factory=list)

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()
        self.hooks.clear()


def apply_freezing(model, stage: StageConfig) -> FreezeHandle:
    """Set ``requires_grad`` for ``stage``; returns the trainable (name, param, group) list in a fixed order."""
    groups = named_groups(model)
    vocab = model.config.llm.vocab_size
    for p in model.parameters():
        p.requires_grad_(False)
    handle = FreezeHandle()
    seen: set[int] = set()
    for group in PARAM_GROUPS:
        if not stage.trainable(group) or (group == "task_rows" and stage.trainable("llm_base")):
            continue
        for name, p in groups[group]:
            if id(p) in seen:
                continue
            seen.add(id(p))
            p.requires_grad_(True)
            handle.trainable.append((name, p, group))
            if group == "task_rows":
                mask = torch.zeros(p.shape[0], 1, dtype=p.dtype, device=p.device)
                mask[vocab:] = 1
                handle.row_masked.add(id(p))
                handle.hooks.append(p.register_hook(lambda g, m=mask: g * m.to(g.dtype)))
    if not handle.trainable:
        raise ValueError(f"stage {stage.name}: the groups {sorted(stage.lr)} hold no parameters in this model "
                         "(lora needs apply_lora: true)")
    return handle


def build_optimizer(handle: FreezeHandle, stage: StageConfig) -> torch.optim.AdamW:
    """AdamW with one param group per training group (its own lr); no weight decay on biases, norms,
    1-D tensors, the task tokens and row-masked embeddings."""
    param_groups = []
    for group in PARAM_GROUPS:
        members = [(n, p) for n, p, g in handle.trainable if g == group]
        if not members:
            continue
        decay = [p for n, p in members if p.ndim >= 2 and id(p) not in handle.row_masked and group != "task_tokens"]
        no_decay = [p for n, p in members if not (p.ndim >= 2 and id(p) not in handle.row_masked
                                                  and group != "task_tokens")]
        lr = float(stage.lr[group])
        if decay:
            param_groups.append({"params": decay, "lr": lr, "weight_decay": stage.weight_decay,
                                 "group": group, "names": [n for n, p in members if any(p is q for q in decay)]})
        if no_decay:
            param_groups.append({"params": no_decay, "lr": lr, "weight_decay": 0.0, "group": group,
                                 "names": [n for n, p in members if any(p is q for q in no_decay)]})
    fused = all(p.is_cuda for g in param_groups for p in g["params"])  # one kernel per step on the GPU
    return torch.optim.AdamW(param_groups, lr=param_groups[0]["lr"], betas=stage.betas, eps=stage.adam_eps,
                             fused=fused or None)


def group_parameters(handle: FreezeHandle) -> dict[str, list[nn.Parameter]]:
    """Trainable parameters by training group, in ``PARAM_GROUPS`` order (for per-group norms and clipping)."""
    out: dict[str, list[nn.Parameter]] = {}
    for _, p, group in handle.trainable:
        out.setdefault(group, []).append(p)
    return {g: out[g] for g in PARAM_GROUPS if g in out}
