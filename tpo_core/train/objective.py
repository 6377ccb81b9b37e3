"""The training forward of a TPOModel: LM cross-entropy + head losses read through the task embeddings.

One call on a ``Batch`` (B samples, L tokens, T frames):

1. ``encode_video(frames [B, T, 3, S, S]) -> visual [B, Nv, D], frame_feats [B, T, Dv]``.
2. Input embeddings ``llm.embed(input_ids) [B, L, D]`` (task placeholders -> learnable task tokens), the
   visual tokens written into their slots (one slice when every row has them at the same position, the
   prompt layout of ``PromptBuilder``); the LLM runs once with teacher forcing over the whole sequence under
   an explicit causal + right-padding mask [B, 1, L, L] -> logits [B, L, V+7], last hidden states [B, L, D].
3. ``lm`` = token-mean cross-entropy of the answer labels (incl. ``*_begin`` and EOS).
4. The hidden state at each sample's task placeholder [D] is its task embedding; it feeds the matching head
   through ``grad_scale`` (identity forward; the gradient into the shared model times the stage's
   ``head_grad_scale`` of that head):
   - region: ``region_loss`` (2 * L1 + (1 - GIoU) / 5) on normalized xyxy.
   - temporal: the DETR set loss ``temporal_loss`` (its own CG-DETR weights); the stage weight scales its
     total. The frame features it reads go through the same ``grad_scale``.
   - mask: the prompt MLP -> ``track_batch`` over the ``Tm`` training frames of all mask samples at once
     (differentiable) -> ``mask_pixel`` = BCE + Dice of the pre-gating low-res logits vs the low-res targets
     (frames where the object is visible), ``mask_object`` = BCE of the object-score logits vs presence (all
     frames), both as means over samples of ``mask_head_losses``' per-sample values (computed batched);
     ``mask_distill`` = L1 between the sparse prompt [3, C] and SAM2's own prompt embedding of the first-frame
     box (the release's distillation), ``mask_box`` = L1 of the auxiliary box MLP vs that box, over the
     samples whose object is visible on mask frame 0. With the pointer (``config.pointer.enabled``) the
     prompt is SAM2's box prompt of the pointer head's box (``MaskHead.embed_boxes``, differentiable: the
     pixel loss reaches the box; with ``mask.box_mask_prompt`` also SAM2's mask prompt of it), ``mask_distill``
     is only a readout (no gradient) and ``mask_box`` = 2 L1 + (1 - GIoU) / 5 of that box.
   - region / mask: with the pointer, the heads also read the patch tokens [B, T', P, Dv]
     (``encode_video_patches``), scaled into the trunk by the head's ``head_grad_scale`` like the task embedding.

5. ``patch`` (a model with ``vision.patch_classifier`` and a batch with patch labels): soft cross-entropy of the
   classifier's logits on every patch token [B, T', P, C] against the patch's class distribution (``patch_cover``
   scattered into ``patch_classes``), a weighted mean over the patches of the samples whose video has labels (a
   patch weighs ``1 - 0.9 * its background share``: objects cover ~5 % of the patches); logged
   with ``patch_acc``, the accuracy of the arg-max class on the patches at least half covered by one object (the
   dense probe of the vision stage: how well the encoder tells the colour x shape of what it sees).

``loss = sum(weight[term] * term)``; every term is returned (detached) for logging. Terms whose weight is 0
are not computed (stage 1 runs no tracking). Nothing here reads a value back to the host (no
``.item()``/``bool(tensor)``/data-dependent shapes): a training step queues its whole forward and backward
without waiting for the device (the one exception: span matching for a sample with more than
``losses.GPU_MATCH_MAX_TARGETS`` windows falls back to scipy).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..data.collate import IGNORE_INDEX, Batch
from ..modeling.heads.mask_track import track_batch
from ..modeling.losses import box_giou, region_loss, temporal_loss
from ..modeling.mask_losses import dice_loss

PATCH_BACKGROUND_WEIGHT = 0.1  # the patch loss's weight of a background patch (an object patch weighs 1)


class _GradScale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.scale, None


def grad_scale(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Identity in the forward pass; multiplies the gradient by ``scale`` in the backward pass."""
    return x if scale == 1.0 else _GradScale.apply(x, float(scale))


def causal_padding_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """``attention_mask [B, L]`` (1 = real token, right padding) -> bool ``[B, 1, L, L]``, True = attend: causal and
    never to a padding key. transformers uses a 4D mask as given (no checks that read the mask back)."""
    length = attention_mask.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=attention_mask.device).tril()
    return causal[None, None] & attention_mask.bool()[:, None, None, :]


def batched_mask_terms(raw_logits: torch.Tensor, object_logits: torch.Tensor,
                       targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``mask_head_losses``' pixel (BCE + Dice) and object-score terms for Bm samples at once, averaged over
    samples: ``raw_logits [Bm, T, 1, s, s]``, ``object_logits [Bm, T, 1]``, ``targets [Bm, T, s, s]`` in {0, 1}.
    Per sample, the pixel terms are means over the frames where the object is present."""
    t = targets.to(raw_logits.dtype)[:, :, None]  # [Bm, T, 1, s, s]
    present = targets.flatten(2).amax(dim=2).to(raw_logits.dtype)  # [Bm, T]
    bm, frames = present.shape
    bce = F.binary_cross_entropy_with_logits(raw_logits, t, reduction="none").flatten(2).mean(2)  # [Bm, T]
    dice = dice_loss(raw_logits.reshape(bm * frames, *raw_logits.shape[2:]),
                     t.reshape(bm * frames, *t.shape[2:])).reshape(bm, frames)
    count = present.sum(1).clamp(min=1.0)
    pixel = ((bce * present).sum(1) / count + (dice * present).sum(1) / count).mean()
    obj = F.binary_cross_entropy_with_logits(object_logits[..., 0], present)
    return pixel, obj


def patch_terms(logits: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """``logits [B, T, P, C]`` of the patch classifier -> (soft cross-entropy, accuracy on object patches); see the
    module docstring. The targets: ``patch_cover [B, T, P, K]`` scattered into ``patch_classes [B, K]``."""
    cover, classes, valid = batch.patch_cover, batch.patch_classes, batch.patch_valid
    b, t, p, k = cover.shape
    target = torch.zeros(b, t, p, logits.shape[-1], device=cover.device, dtype=torch.float32)
    target.scatter_add_(-1, classes[:, None, None, :].expand(b, t, p, k), cover.float())
    ce = -(target * logits.float().log_softmax(-1)).sum(-1)  # [B, T, P]
    # about 95 % of the patches are background: its share of a patch weighs PATCH_BACKGROUND_WEIGHT
    weight = (1.0 - (1.0 - PATCH_BACKGROUND_WEIGHT) * target[..., 0]) * valid[:, None, None]
    loss = (ce * weight).sum() / weight.sum().clamp(min=1e-6)
    best, cls = target.max(-1)  # the dominant class of each patch and its share
    on_object = (best >= 0.5) & (cls > 0) & (valid[:, None, None] > 0)
    hits = (logits.argmax(-1) == cls) & on_object
    acc = hits.sum().float() / on_object.sum().clamp(min=1).float()
    return loss, acc


class TPOObjective(nn.Module):
    """Wraps a TPOModel so one ``forward(batch)`` gives the weighted loss (a module, so DDP can wrap it)."""

    def __init__(self, model, loss_weights: dict[str, float], head_grad_scale: dict[str, float] | None = None):
        super().__init__()
        self.model = model
        self.loss_weights = dict(loss_weights)
        self.head_grad_scale = dict(head_grad_scale or {})

    def _w(self, name: str) -> float:
        return float(self.loss_weights.get(name, 0.0))

    def _g(self, head: str) -> float:
        return float(self.head_grad_scale.get(head, 1.0))

    def _embeddings(self, batch: Batch, visual: torch.Tensor) -> torch.Tensor:
        emb = self.model.llm.embed(batch.input_ids, no_track_boxes=True)
        visual = visual.to(emb.dtype)
        if batch.visual_start is not None:  # every row has its visual slots at the same place
            s = batch.visual_start
            return torch.cat([emb[:, :s], visual, emb[:, s + visual.shape[1]:]], dim=1)
        return emb.masked_scatter(batch.visual_mask.unsqueeze(-1), visual)

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        """-> ``{"loss": weighted total (grad), "<term>": detached value, ...}``."""
        model = self.model
        visual, frame_feats, patch_tokens = model.encode_video_patches(batch.frames)
        patches = patch_tokens if model.uses_patches else None
        emb = self._embeddings(batch, visual)
        logits, hidden, _ = model.llm(emb, attention_mask=causal_padding_mask(batch.attention_mask))
        labels = batch.labels[:, 1:]
        lm = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                             ignore_index=IGNORE_INDEX)
        terms: dict[str, torch.Tensor] = {"lm": lm}
        total = self._w("lm") * lm
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        task_emb = hidden[rows, batch.placeholder_pos.clamp(min=0)]  # [B, D]
        items, index = batch.head_items, batch.head_index
        if items["region"] and self._w("region"):
            h = grad_scale(task_emb[index["region"]], self._g("region"))
            p = None if patches is None else grad_scale(patches[index["region"]], self._g("region"))
            out = region_loss(model.region_head(h, p).float(), batch.region_boxes)
            terms.update(region=out["total"], region_l1=out["l1"], region_giou=out["giou"])
            total = total + self._w("region") * out["total"]
        if items["temporal"] and self._w("temporal"):
            idx, g = index["temporal"], self._g("temporal")
            out = model.temporal_head(grad_scale(task_emb[idx], g), grad_scale(frame_feats[idx], g),
                                      batch.frame_times[idx])
            out = type(out)(*(t.float() for t in out))
            parts = temporal_loss(out, batch.temporal_spans, batch.temporal_relevance,
                                  levels=batch.temporal_levels)
            terms["temporal"] = parts["total"]
            terms.update({f"temporal_{k}": v for k, v in parts.items() if k != "total"})
            total = total + self._w("temporal") * parts["total"]
        if items["mask"] and any(self._w(k) for k in ("mask_pixel", "mask_object", "mask_distill", "mask_box")):
            p = None if patches is None else grad_scale(patches[index["mask"]], self._g("mask"))
            parts = self._mask_terms(grad_scale(task_emb[index["mask"]], self._g("mask")), batch, p)
            for k, v in parts.items():
                terms[k] = v
                total = total + self._w(k) * v
        if batch.patch_cover is not None and self._w("patch") and model.vision.patch_classifier is not None:
            terms["patch"], terms["patch_acc"] = patch_terms(model.vision.patch_classifier(patch_tokens), batch)
            total = total + self._w("patch") * terms["patch"]
        out = {k: v.detach() for k, v in terms.items()}
        out["loss"] = total
        return out

    def _mask_terms(self, task_emb: torch.Tensor, batch: Batch, patches: torch.Tensor | None = None
                    ) -> dict[str, torch.Tensor]:
        """task_emb [Bm, D] for the batch's mask samples -> mask terms, means over samples.

        All Bm samples are tracked together (``track_batch``: one image-encoder call over Bm * Tm frames, one
        decode / memory step per frame for the Bm videos); the per-sample losses equal those of ``track`` on
        each video alone. Distillation / box terms average over the samples whose object is visible on mask
        frame 0 only (a weighted mean: no branch on the data).
        """
        head = self.model.mask_head
        run_track = bool(self._w("mask_pixel") or self._w("mask_object"))  # distillation alone needs no track
        pred_box = head.box(task_emb, patches) if head.uses_patches else None  # [Bm, 4]
        # with the pointer the prompt is SAM2's box prompt of the pointer's box; the pixel loss reaches the box
        prompts = head.sparse_prompt(task_emb) if pred_box is None else head.embed_boxes(pred_box)
        out = {}
        if self._w("mask_distill") or self._w("mask_box"):
            boxes = batch.mask_boxes  # [Bm, 4]
            valid = ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).float()  # [Bm]
            count = valid.sum().clamp(min=1.0)
            teacher = head.box_prompt_embedding(boxes).float()
            # with the pointer a readout only: a gradient would pull SAM2's prompt encoder towards collapse
            student = prompts.float() if pred_box is None else prompts.detach().float()
            distill = (student - teacher).abs().flatten(1).mean(1)  # [Bm]
            if pred_box is None:
                box = (head.box(task_emb).float() - boxes).abs().mean(1)
            else:  # the pointer's box is the prompt: 2 L1 + (1 - GIoU) / 5 per sample (as region_loss)
                safe = torch.where(valid[:, None] > 0, boxes, torch.tensor([0.0, 0.0, 1.0, 1.0], device=boxes.device))
                pb = pred_box.float()
                box = 2.0 * (pb - boxes).abs().mean(1) + 0.2 * (1.0 - box_giou(pb, safe.to(pb.dtype)))
            out["mask_distill"] = (distill * valid).sum() / count
            out["mask_box"] = (box * valid).sum() / count
        if run_track:
            pixels = batch.mask_pixels  # [Bm, Tm, 3, S, S], preprocessed by the collator
            if pixels is None:
                pixels = torch.stack([head.preprocess(frames) for frames in batch.mask_frames])
            track = track_batch(head, pixels.to(task_emb.dtype), prompts.to(task_emb.dtype), box=pred_box)
            out["mask_pixel"], out["mask_object"] = batched_mask_terms(
                track.raw_low_res_logits.float(), track.object_score_logits.float(), batch.mask_targets)
        return out
