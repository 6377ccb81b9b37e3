"""Mask-head losses: pixel BCE + Dice on propagated masks, object-score BCE, and TPO's prompt-space distillation.

The paper's mask loss is a distillation into SAM2's prompt space: L1 between ``prompt_mlp(h)`` [B, 3, C] and the
frozen SAM2 prompt encoder's sparse embedding of the ground-truth first-frame box (2 corner points + 1 padding
point, ``MaskHead.box_prompt_embedding``), plus L1 of the auxiliary box MLP against that box. The pixel and
object-score terms train through ``track`` (SAM2's own training losses, minus focal/IoU terms).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from tpo_core.modeling.heads.mask_track import TrackOutput

LOSS_NAMES = ("mask_bce", "mask_dice", "object_score", "prompt_l1", "box_l1")


def boxes_from_masks(masks: Tensor) -> Tensor:
    """Tight boxes of binary masks [B, H, W] -> normalized xyxy [B, 4] (x2, y2 exclusive); empty -> zeros."""
    if masks.ndim != 3:
        raise ValueError(f"masks must be [B, H, W], got shape {tuple(masks.shape)}")
    b, h, w = masks.shape
    m = masks.bool()
    cols, rows = m.any(dim=1), m.any(dim=2)  # [B, W], [B, H]
    xs = torch.arange(w, device=masks.device)
    ys = torch.arange(h, device=masks.device)
    big = max(h, w) + 1
    x1 = torch.where(cols, xs, big).amin(dim=1)
    x2 = torch.where(cols, xs, -1).amax(dim=1) + 1
    y1 = torch.where(rows, ys, big).amin(dim=1)
    y2 = torch.where(rows, ys, -1).amax(dim=1) + 1
    box = torch.stack([x1 / w, y1 / h, x2 / w, y2 / h], dim=1).float()
    return torch.where(m.flatten(1).any(dim=1, keepdim=True), box, torch.zeros_like(box))


def resize_targets(target_masks: Tensor, size: int) -> Tensor:
    """Target masks [T, H, W] (bool or {0,1}) -> soft targets [T, 1, size, size] in [0, 1] (antialiased)."""
    t = target_masks.float()[:, None]
    if t.shape[-2:] == (size, size):
        return t
    return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)


def dice_loss(logits: Tensor, targets: Tensor, eps: float = 1.0) -> Tensor:
    """Per-frame soft Dice loss: logits, targets [T, 1, s, s] -> [T]."""
    p = torch.sigmoid(logits).flatten(1)
    t = targets.flatten(1)
    return 1 - (2 * (p * t).sum(1) + eps) / (p.sum(1) + t.sum(1) + eps)


def _masked_mean(values: Tensor, weights: Tensor) -> Tensor:
    return (values * weights).sum() / weights.sum().clamp(min=1.0)


def mask_head_losses(
    output: TrackOutput,
    target_masks: Tensor,
    *,
    sparse_prompt: Tensor | None = None,
    teacher_prompt: Tensor | None = None,
    box_pred: Tensor | None = None,
    box_target: Tensor | None = None,
    bce_weight: float = 1.0,
    dice_weight: float = 1.0,
    object_score_weight: float = 1.0,
    prompt_weight: float = 1.0,
    box_weight: float = 1.0,
) -> dict[str, Tensor]:
    """All mask-head loss terms by name (``LOSS_NAMES``) plus their weighted ``total``.

    output: ``TrackOutput`` of T frames (pixel terms use the ungated ``raw_low_res_logits``).
    target_masks: [T, H, W] ground truth (resized to the low-res grid). Pixel terms count only frames where the
        object is present (as SAM2); ``object_score`` is BCE on every frame against presence, so frames where
        the object is absent teach the head to say so.
    sparse_prompt / teacher_prompt: [B, 3, C] ``prompt_mlp(h)`` and the frozen prompt encoder's box embedding.
    box_pred / box_target: [B, 4] normalized xyxy. A term whose inputs are missing is 0 (still in the dict).
    """
    logits = output.raw_low_res_logits
    if target_masks.ndim != 3 or target_masks.shape[0] != logits.shape[0]:
        raise ValueError(f"target_masks must be [T={logits.shape[0]}, H, W], got {tuple(target_masks.shape)}")
    targets = resize_targets(target_masks.to(logits.device), logits.shape[-1])
    present = target_masks.flatten(1).any(dim=1).to(logits.device, logits.dtype)  # [T]
    zero = logits.new_zeros(())
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").flatten(1).mean(1)
    terms = {
        "mask_bce": _masked_mean(bce, present),
        "mask_dice": _masked_mean(dice_loss(logits, targets), present),
        "object_score": F.binary_cross_entropy_with_logits(output.object_score_logits[:, 0], present),
        "prompt_l1": zero,
        "box_l1": zero,
    }
    if sparse_prompt is not None and teacher_prompt is not None:
        if sparse_prompt.shape != teacher_prompt.shape:
            raise ValueError(f"sparse_prompt {tuple(sparse_prompt.shape)} and teacher_prompt "
                             f"{tuple(teacher_prompt.shape)} must have the same shape [B, 3, C]")
        terms["prompt_l1"] = F.l1_loss(sparse_prompt, teacher_prompt.detach().to(sparse_prompt.dtype))
    if box_pred is not None and box_target is not None:
        if box_pred.shape != box_target.shape or box_pred.shape[-1] != 4:
            raise ValueError(f"box_pred {tuple(box_pred.shape)} and box_target {tuple(box_target.shape)} must both "
                             "be normalized xyxy [B, 4]")
        terms["box_l1"] = F.l1_loss(box_pred, box_target.to(box_pred.dtype))
    weights = {"mask_bce": bce_weight, "mask_dice": dice_weight, "object_score": object_score_weight,
               "prompt_l1": prompt_weight, "box_l1": box_weight}
    terms["total"] = sum(weights[k] * terms[k] for k in LOSS_NAMES)
    return terms


__all__ = ["LOSS_NAMES", "boxes_from_masks", "resize_targets", "dice_loss", "mask_head_losses"]
