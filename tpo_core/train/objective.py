"""The training forward of a TPOModel: LM cross-entropy + head losses read through the task embeddings.

One call on a ``Batch`` (B samples, L tokens, T frames):

1. ``encode_video(frames [B, T, 3, S, S]) -> visual [B, Nq, D], frame_feats [B, T, Dv]``.
2. Input embeddings ``llm.embed(input_ids) [B, L, D]`` (task placeholders -> learnable task tokens), the
   visual tokens scattered into the visual slots; the LLM runs once with teacher forcing over the whole
   sequence (right padding masked) -> logits [B, L, V+7], last hidden states [B, L, D].
3. ``lm`` = token-mean cross-entropy of the answer labels (incl. ``*_begin`` and EOS).
4. The hidden state at each sample's task placeholder [D] is its task embedding; it feeds the matching head:
   - region: ``region_loss`` (2 * L1 + (1 - GIoU) / 5) on normalized xyxy.
   - temporal: the DETR set loss ``temporal_loss`` (its own CG-DETR weights); the stage weight (paper 0.05)
     scales its total.
   - mask: the prompt MLP -> ``track_batch`` over the ``Tm`` training frames of all mask samples at once
     (differentiable), then per sample
     ``mask_head_losses``: ``mask_pixel`` = BCE + Dice of the pre-gating low-res logits vs the low-res
     targets (frames where the object is visible), ``mask_object`` = BCE of the object-score logits vs
     presence (all frames), ``mask_distill`` = L1 between the sparse prompt [3, C] and SAM2's own prompt
     embedding of the first-frame box (the release's distillation), ``mask_box`` = L1 of the auxiliary box
     MLP vs that box. Samples whose object is absent on frame 0 get no distillation / box term.

``loss = sum(weight[term] * term)``; every term is returned (detached) for logging. Terms whose weight is 0
are not computed (stage 1 runs no head).
"""

from __future__ import annotations

from dataclasses import fields

import torch
import torch.nn.functional as F
from torch import nn

from ..data.collate import IGNORE_INDEX, Batch
from ..modeling.heads.mask_track import TrackOutput, track_batch
from ..modeling.losses import region_loss, temporal_loss
from ..modeling.mask_losses import mask_head_losses


class TPOObjective(nn.Module):
    """Wraps a TPOModel so one ``forward(batch)`` gives the weighted loss (a module, so DDP can wrap it)."""

    def __init__(self, model, loss_weights: dict[str, float]):
        super().__init__()
        self.model = model
        self.loss_weights = dict(loss_weights)

    def _w(self, name: str) -> float:
        return float(self.loss_weights.get(name, 0.0))

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        """-> ``{"loss": weighted total (grad), "<term>": detached value, ...}``."""
        model = self.model
        visual, frame_feats = model.encode_video(batch.frames)
        emb = model.llm.embed(batch.input_ids)
        emb = emb.masked_scatter(batch.visual_mask.unsqueeze(-1), visual.to(emb.dtype))
        logits, hidden, _ = model.llm(emb, attention_mask=batch.attention_mask)
        labels = batch.labels[:, 1:]
        lm = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                             ignore_index=IGNORE_INDEX)
        terms: dict[str, torch.Tensor] = {"lm": lm}
        total = self._w("lm") * lm
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        task_emb = hidden[rows, batch.placeholder_pos.clamp(min=0)]  # [B, D]
        items = batch.head_items
        if items["region"] and self._w("region"):
            idx = torch.tensor(items["region"], device=hidden.device)
            out = region_loss(model.region_head(task_emb[idx]).float(), batch.region_boxes)
            terms.update(region=out["total"], region_l1=out["l1"], region_giou=out["giou"])
            total = total + self._w("region") * out["total"]
        if items["temporal"] and self._w("temporal"):
            idx = torch.tensor(items["temporal"], device=hidden.device)
            out = model.temporal_head(task_emb[idx], frame_feats[idx], batch.frame_times[idx])
            out = type(out)(*(t.float() for t in out))
            parts = temporal_loss(out, batch.temporal_spans, batch.temporal_relevance)
            terms["temporal"] = parts["total"]
            terms.update({f"temporal_{k}": v for k, v in parts.items() if k != "total"})
            total = total + self._w("temporal") * parts["total"]
        if items["mask"] and any(self._w(k) for k in ("mask_pixel", "mask_object", "mask_distill", "mask_box")):
            parts = self._mask_terms(task_emb[torch.tensor(items["mask"], device=hidden.device)], batch)
            for k, v in parts.items():
                terms[k] = v
                total = total + self._w(k) * v
        out = {k: v.detach() for k, v in terms.items()}
        out["loss"] = total
        return out

    def _mask_terms(self, task_emb: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
        """task_emb [Bm, D] for the batch's mask samples -> mask terms (``mask_head_losses``), mean over samples.

        All Bm samples are tracked together (``track_batch``: one image-encoder call over Bm * Tm frames, one
        decode / memory step per frame for the Bm videos); the per-sample losses equal those of ``track`` on
        each video alone. Distillation / box terms average over the samples whose object is visible on mask
        frame 0 only.
        """
        head = self.model.mask_head
        run_track = bool(self._w("mask_pixel") or self._w("mask_object"))  # distillation alone needs no track
        prompts = head.sparse_prompt(task_emb)  # [Bm, 3, C]
        boxes = batch.mask_boxes  # [Bm, 4]
        valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        zero = task_emb.sum() * 0.0
        out = {"mask_distill": zero, "mask_box": zero, "mask_pixel": zero, "mask_object": zero}
        if bool(valid.any()):
            p, bx, h = prompts[valid], boxes[valid], task_emb[valid]
            # equal-sized samples: the mean over all elements is the mean of the per-sample means
            out["mask_distill"] = F.l1_loss(p.float(), head.box_prompt_embedding(bx).float())
            out["mask_box"] = F.l1_loss(head.box(h).float(), bx)
        if run_track:
            pixels = torch.stack([head.preprocess(frames) for frames in batch.mask_frames])  # [Bm, Tm, 3, S, S]
            track = track_batch(head, pixels.to(task_emb.dtype), prompts)
            pixel, obj = [], []
            for j in range(pixels.shape[0]):
                one = TrackOutput(*(getattr(track, f.name)[j].float() for f in fields(TrackOutput)))
                parts = mask_head_losses(one, batch.mask_targets[j])
                pixel.append(parts["mask_bce"] + parts["mask_dice"])
                obj.append(parts["object_score"])
            out["mask_pixel"], out["mask_object"] = torch.stack(pixel).mean(), torch.stack(obj).mean()
        return out
