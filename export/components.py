"""Export wrappers for every component except the LLM (``export/llm_graph.py``): thin modules that share the
model's weights (no copies) and take/return exactly the tensors of ``tpo_core.export_specs``.

ONNX IO (``F`` = export precision's float type; ``D`` LLM width, ``Dv`` vision width, ``S``/``Sm`` vision and
mask image sizes, ``C`` mask width, ``Cm`` memory width, ``M`` memory slots, ``P`` = 16 pointer slots,
``HW`` = (Sm/16)^2, ``s`` = Sm/4, ``Q`` span queries, ``Nv`` visual tokens (``TPOConfig.num_visual_tokens``);
with ``config.pointer.enabled`` (the tiny preset), ``P`` in ``patch_tokens`` is (S/patch)^2 and T is T // tubelet)):

=====================  =====================================================  ==========================================
graph                  inputs                                                 outputs
=====================  =====================================================  ==========================================
vision                 frames float32 [batch, T, 3, S, S] RGB 0..255          visual_tokens F [batch, Nv, D],
                       (resized by the runtime; clamped + normalized here)    frame_features F [batch, T, Dv]
                                                                              (+ patch_tokens F [batch, T, P, Dv]
                                                                              with the pointer)
head_region            task_embedding F [batch, D] (+ patch_tokens F          box F [batch, 4] normalized xyxy
                       [batch, T, P, Dv] with the pointer)
head_temporal          task_embedding F [batch, D], frame_features F          pred_logits F [batch, Q, 2],
                       [batch, clips, Dv], frame_times float32 [batch,        pred_spans F [batch, Q, 2] (cx, w),
                       clips] (t / duration), frame_mask bool [batch, clips]  saliency F [batch, clips]
loc_encoder            boxes float32 [boxes, 4] normalized xyxy               embeddings F [boxes, D]
mask_image_encoder     pixels float32 [images, 3, Sm, Sm] RGB 0..255          feat_s0 F [images, C/8, s, s], feat_s1 F
                       (resized, bilinear + antialias, by the runtime)        [images, C/4, Sm/8, Sm/8], embedding F
                                                                              [images, HW, C], embedding_pos F (same)
mask_prompt            task_embedding F [objects, D] (+ patch_tokens F        sparse_prompt F [objects, 3, C] (+
                       [objects, T, P, Dv] with the pointer)                  prompt_box F [objects, 4] with
                                                                              mask.box_mask_prompt)
mask_decoder           feat_s0, feat_s1, conditioned F [objects, HW, C],      low_res_logits F [objects, 1, s, s],
                       sparse_prompt F [objects, prompt_tokens, C] (+         iou F [objects, 1], object_score_logits
                       prompt_box F [objects, 4] with box_mask_prompt)        F [objects, 1], object_pointer F [.., C]
mask_memory_attention  embedding, embedding_pos F [objects, HW, C],           conditioned F [objects, HW, C]
                       memory, memory_pos F [objects, M, HW, Cm],
                       memory_offsets int64 [objects, M], memory_valid bool
                       [objects, M], pointers F [objects, P, C],
                       pointer_offsets int64 [objects, P], pointer_valid bool
mask_memory_encoder    embedding F [objects, HW, C], low_res_logits F         memory F [objects, HW, Cm],
                       [objects, 1, s, s], object_score_logits F [objects, 1]  memory_pos F [objects, HW, Cm]
=====================  =====================================================  ==========================================

Mask head split (SAM2 as deployed): the prompt MLP is its own small graph (``mask_prompt``) so the decoder,
which runs on every frame, takes a generic sparse prompt: ``mask_prompt``'s [objects, 3, C] on the prompted
frame, the ``mask_no_prompt`` tensor [2, C] (broadcast to objects) on tracking frames; with ``box_mask_prompt`` it
also takes ``prompt_box`` (the prompted frame's box, SAM2's mask prompt of it; zeros on tracking frames). The
prompted frame is conditioned by running ``mask_memory_attention`` with every slot invalid, which returns
``embedding + no_memory_embedding`` exactly like SAM2 (no separate tensor needed).
"""

from __future__ import annotations

import torch
from torch import nn

from tpo_core.modeling.heads.mask import ImageFeatures, MemoryState
from tpo_core.modeling.heads.pointer import split_patches


def same_batch(*tensors: torch.Tensor) -> None:
    """Tell ``torch.export`` that every input shares dim 0 (else ``view(b, -1, ...)`` of one input's batch over
    another's numel becomes an unsimplifiable FloorDiv and a data-dependent slice)."""
    if torch.jit.is_tracing():  # the TorchScript tracer records shapes as tensors; nothing to tell it
        return
    for t in tensors[1:]:
        torch._check(t.shape[0] == tensors[0].shape[0])


class Normalize(nn.Module):
    """0..255 RGB (channel dim ``dim``) -> clamp, /255, (x - mean) / std, cast to ``dtype``."""

    def __init__(self, mean, std, channel_dim: int, rank: int, dtype: torch.dtype):
        super().__init__()
        shape = [1] * rank
        shape[channel_dim] = 3
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(shape), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(shape), persistent=False)
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float32).clamp(0.0, 255.0) / 255.0
        return ((x - self.mean) / self.std).to(self.dtype)


class VisionGraph(nn.Module):
    """frames [B, T, 3, S, S] 0..255 -> (visual_tokens [B, Nv, D], frame_features [B, T', Dv])."""

    def __init__(self, model, dtype: torch.dtype):
        super().__init__()
        v = model.config.vision
        self.vision, self.connector = model.vision, model.connector
        self.connect = model.connect  # the connector, with the patch classifier's logits for object tokens
        self.norm = Normalize(v.mean, v.std, channel_dim=2, rank=5, dtype=dtype)
        self.slots = v.num_frames // v.tubelet_size

        self.patches = model.config.pointer.enabled  # also return patch_tokens [B, T', P, Dv]

    def forward(self, frames: torch.Tensor):
        tokens = self.vision(self.norm(frames))
        out = (self.connect(tokens), self.vision.frame_features(tokens, self.slots))
        return out + (split_patches(tokens, self.slots),) if self.patches else out


class RegionGraph(nn.Module):
    """task_embedding [B, D] (, patch_tokens [B, T', P, Dv] with the pointer) -> box [B, 4]."""

    def __init__(self, model, dtype: torch.dtype):
        super().__init__()
        self.head = model.region_head

    def forward(self, task_embedding: torch.Tensor, patch_tokens: torch.Tensor | None = None):
        if patch_tokens is not None:
            same_batch(task_embedding, patch_tokens)
        return self.head(task_embedding, patch_tokens)


class TemporalGraph(nn.Module):
    def __init__(self, model, dtype: torch.dtype):
        super().__init__()
        self.head, self.dtype = model.temporal_head, dtype

    def forward(self, task_embedding, frame_features, frame_times, frame_mask):
        same_batch(task_embedding, frame_features, frame_times, frame_mask)
        out = self.head(task_embedding, frame_features, frame_times.to(self.dtype), frame_mask)
        return out.pred_logits, out.pred_spans, out.saliency


class LocEncoderGraph(nn.Module):
    def __init__(self, model, dtype: torch.dtype):
        super().__init__()
        self.mlp, self.dtype = model.llm.loc_encoder, dtype

    def forward(self, boxes: torch.Tensor):
        return self.mlp(boxes.to(self.dtype))


class MaskImageGraph(nn.Module):
    def __init__(self, model, dtype: torch.dtype):
        super().__init__()
        from tpo_core.config import IMAGENET_MEAN, IMAGENET_STD

        self.head = model.mask_head
        self.norm = Normalize(IMAGENET_MEAN, IMAGENET_STD, channel_dim=1, rank=4, dtype=dtype)

    def forward(self, pixels: torch.Tensor):
        f = self.head.encode_image(self.norm(pixels))
        return f.feat_s0, f.feat_s1, f.embedding, f.embedding_pos


class MaskPromptGraph(nn.Module):
    def __init__(self, model, dtype: torch.dtype):
        super().__init__()
        self.head = model.mask_head

    def forward(self, task_embedding: torch.Tensor, patch_tokens: torch.Tensor | None = None):
        if patch_tokens is not None:
            same_batch(task_embedding, patch_tokens)
        sparse, box = self.head.prompt(task_embedding, patch_tokens)
        return sparse if box is None else (sparse, box.to(sparse.dtype))


class MaskDecoderGraph(nn.Module):
    def __init__(self, model, dtype: torch.dtype):
        super().__init__()
        self.head = model.mask_head

    def forward(self, feat_s0, feat_s1, conditioned, sparse_prompt, prompt_box=None):
        same_batch(feat_s0, feat_s1, conditioned, sparse_prompt, *(() if prompt_box is None else (prompt_box,)))
        out = self.head.decode(ImageFeatures(feat_s0, feat_s1, conditioned, conditioned), conditioned, sparse_prompt,
                               box=prompt_box)
        return out.low_res_logits, out.iou, out.object_score_logits, out.object_pointer


class MaskMemoryAttentionGraph(nn.Module):
    def __init__(self, model, dtype: torch.dtype):
        super().__init__()
        self.head = model.mask_head

    def forward(self, embedding, embedding_pos, memory, memory_pos, memory_offsets, memory_valid, pointers,
                pointer_offsets, pointer_valid):
        state = MemoryState(memory, memory_pos, memory_offsets, memory_valid, pointers, pointer_offsets, pointer_valid)
        same_batch(embedding, embedding_pos, *state.as_tuple())
        return self.head.memory_attention(embedding, embedding_pos, state)


class MaskMemoryEncoderGraph(nn.Module):
    def __init__(self, model, dtype: torch.dtype):
        super().__init__()
        self.head = model.mask_head

    def forward(self, embedding, low_res_logits, object_score_logits):
        same_batch(embedding, low_res_logits, object_score_logits)
        return self.head.encode_memory(embedding, low_res_logits, object_score_logits)


class LLMComponent(nn.Module):
    """``LLMGraph`` of the model's LM; ``past`` is one list (flattened to one ONNX input per tensor)."""

    def __init__(self, model, dtype: torch.dtype):
        super().__init__()
        from export.llm_graph import LLMGraph

        if model.llm.lora_applied:
            raise ValueError("merge LoRA before exporting the LLM (TaskLLM.merge_lora)")
        self.net = LLMGraph(model.llm.lm)  # not "graph": that name is taken by fx.GraphModule

    def forward(self, inputs_embeds, position_ids, attention_mask, past: list[torch.Tensor]):
        same_batch(inputs_embeds, position_ids, attention_mask, *past)
        return self.net(inputs_embeds, position_ids, attention_mask, past)


WRAPPERS: dict[str, type[nn.Module]] = {
    "vision": VisionGraph,
    "llm": LLMComponent,
    "head_region": RegionGraph,
    "head_temporal": TemporalGraph,
    "loc_encoder": LocEncoderGraph,
    "mask_image_encoder": MaskImageGraph,
    "mask_prompt": MaskPromptGraph,
    "mask_decoder": MaskDecoderGraph,
    "mask_memory_attention": MaskMemoryAttentionGraph,
    "mask_memory_encoder": MaskMemoryEncoderGraph,
}


def build_wrapper(name: str, model, dtype: torch.dtype) -> nn.Module:
    if name not in WRAPPERS:
        raise ValueError(f"unknown component {name!r}; components: {sorted(WRAPPERS)}")
    return WRAPPERS[name](model, dtype).eval()
