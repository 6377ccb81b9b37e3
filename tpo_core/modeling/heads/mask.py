"""SAM2-style mask head: image encoder, prompt MLP, mask decoder, memory attention and memory encoder.

The network parts are the real ``transformers`` SAM2-video modules (``Sam2VideoModel`` built from a
``Sam2VideoConfig`` derived from our ``MaskHeadConfig``); the 7B preset gives SAM2 Hiera-L at 1024 px, the
tiny preset the same classes at 128 px. What ``transformers`` orchestrates with an inference session and
string-keyed dicts is re-done here as four stateless, fixed-shape stages (each one becomes an ONNX graph):

==========================  ====================================================================================
stage                       tensors (B = objects/batch, S = image size, C = hidden_dim, Cm = mem_dim, h = S/16)
==========================  ====================================================================================
``encode_image``            pixels [B, 3, S, S] -> feat_s0 [B, C/8, S/4, S/4], feat_s1 [B, C/4, S/8, S/8],
                            embedding [B, h*h, C], embedding_pos [B, h*h, C]
``memory_attention``        embedding, embedding_pos + a fixed-capacity ``MemoryState`` -> conditioned [B, h*h, C]
``decode``                  feat_s0, feat_s1, conditioned, sparse prompt [B, N, C] (+ prompt box [B, 4] with
                            ``box_mask_prompt``) -> low-res logits [B, 1, S/4, S/4], iou [B, 1], object score
                            logits [B, 1], object pointer [B, C]
``encode_memory``           embedding, low-res logits, object score -> memory [B, h*h, Cm], memory_pos [B, h*h, Cm]
==========================  ====================================================================================

``mask_track.track`` chains them frame by frame over a ring-buffer memory bank. The full IO
contract is in ``docs/mask_head.md``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import Sam2VideoConfig, Sam2VideoModel
from transformers.models.sam2.configuration_sam2 import Sam2HieraDetConfig, Sam2VisionConfig
from transformers.models.sam2_video.configuration_sam2_video import (
    Sam2VideoMaskDecoderConfig,
    Sam2VideoPromptEncoderConfig,
)
from transformers.models.sam2_video.modeling_sam2_video import (
    Sam2VideoRoPEAttention,
    apply_rotary_pos_emb_2d,
    get_1d_sine_pe,
)

from tpo_core.config import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MAX_OBJECT_POINTERS,
    NO_OBJ_SCORE,
    MaskHeadConfig,
    PointerConfig,
    VisionConfig,
)

BOX_RASTER_EDGE = 0.5  # soft edge of the box mask prompt, in cells of the S/4 grid (sigmoid temperature)
SAM_VARIANTS = ("sam2", "sam2.1")  # the release ships SAM2 (2.0) weights: no obj_ptr_tpos_proj, no_obj_embed_spatial
MASK_THRESHOLD = 0.0


@dataclass
class ImageFeatures:
    """Output of ``MaskHead.encode_image``: everything later stages need from one frame.

    feat_s0: [B, C/8, S/4, S/4] stride-4 FPN level, already projected by the decoder's ``conv_s0``.
    feat_s1: [B, C/4, S/8, S/8] stride-8 FPN level, already projected by ``conv_s1``.
    embedding: [B, HW, C] stride-16 level (HW = (S/16)^2), raw (no memory, no ``no_memory_embedding``).
    embedding_pos: [B, HW, C] its sine position encoding (constant for a given S).
    """

    feat_s0: Tensor
    feat_s1: Tensor
    embedding: Tensor
    embedding_pos: Tensor

    def select(self, rows: Tensor) -> ImageFeatures:
        """The features of batch rows ``rows`` (int64 [R]) as a batch of R."""
        return ImageFeatures(self.feat_s0[rows], self.feat_s1[rows], self.embedding[rows], self.embedding_pos[rows])


@dataclass
class DecodeOutput:
    """Output of ``MaskHead.decode`` (one selected mask per object).

    low_res_logits: [B, 1, S/4, S/4] mask logits, forced to ``NO_OBJ_SCORE`` when the object score is <= 0 (SAM2).
    iou: [B, 1] predicted IoU of the selected mask.
    object_score_logits: [B, 1] object-presence logit (> 0: present).
    object_pointer: [B, C] pointer token for the memory bank (``no_object_pointer`` when absent).
    raw_low_res_logits: [B, 1, S/4, S/4] the selected logits before the absent-object gating (for losses).
    """

    low_res_logits: Tensor
    iou: Tensor
    object_score_logits: Tensor
    object_pointer: Tensor
    raw_low_res_logits: Tensor


@dataclass
class MemoryState:
    """Fixed-capacity memory-attention inputs: unused slots are masked, never dropped (shapes never change).

    memory: [B, M, HW, Cm] spatial memories (M = num_maskmem); slot 0 holds the conditioning frame.
    memory_pos: [B, M, HW, Cm] their spatial position encodings (``encode_memory``'s second output).
    memory_offsets: [B, M] int64 frames between the slot's frame and the current one; 0 marks a conditioning
        frame (SAM2 gives conditioning frames temporal position 0 whatever their distance).
    memory_valid: [B, M] bool, False for empty slots.
    pointers: [B, P, C] object pointers (P = ``MAX_OBJECT_POINTERS``); slot 0 holds the conditioning frame's.
    pointer_offsets: [B, P] int64 frames between the pointer's frame and the current one (conditioning included).
    pointer_valid: [B, P] bool.
    """

    memory: Tensor
    memory_pos: Tensor
    memory_offsets: Tensor
    memory_valid: Tensor
    pointers: Tensor
    pointer_offsets: Tensor
    pointer_valid: Tensor

    def as_tuple(self) -> tuple[Tensor, ...]:
        return (self.memory, self.memory_pos, self.memory_offsets, self.memory_valid, self.pointers,
                self.pointer_offsets, self.pointer_valid)


class MLP(nn.Module):
    """DETR-style MLP (``layers`` ModuleList, ReLU between layers), the layout of the release's heads."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 2):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


def _check_mask_config(cfg: MaskHeadConfig) -> None:
    stages = len(cfg.hiera_stages)
    if stages != 4:
        raise ValueError(f"MaskHeadConfig.hiera_stages has {stages} stages {cfg.hiera_stages}; the SAM2 image encoder "
                         "needs exactly 4 (strides 4, 8, 16, 32)")
    expected = tuple(cfg.hiera_embed_dim * 2**i for i in range(stages))[::-1]
    if cfg.backbone_channel_list != expected:
        raise ValueError(f"MaskHeadConfig.backbone_channel_list={cfg.backbone_channel_list} must be the Hiera stage "
                         f"widths high-to-low, {expected} for hiera_embed_dim={cfg.hiera_embed_dim}")
    total_blocks = sum(cfg.hiera_stages)
    if any(not 0 <= b < total_blocks for b in cfg.hiera_global_attn_blocks):
        raise ValueError(f"MaskHeadConfig.hiera_global_attn_blocks={cfg.hiera_global_attn_blocks} must index the "
                         f"{total_blocks} Hiera blocks (0..{total_blocks - 1})")
    if (cfg.image_size // 4) % cfg.hiera_window_spec[0]:
        raise ValueError(f"MaskHeadConfig: image_size/4={cfg.image_size // 4} must be a multiple of "
                         f"hiera_window_spec[0]={cfg.hiera_window_spec[0]} (SAM2's tiled window position embedding)")
    if cfg.hidden_dim % 32 or cfg.hidden_dim % cfg.mem_dim:
        raise ValueError(f"MaskHeadConfig.hidden_dim={cfg.hidden_dim} must be a multiple of 32 and of "
                         f"mem_dim={cfg.mem_dim} (object pointers are split into hidden_dim/mem_dim memory tokens)")


def build_sam2_video_config(cfg: MaskHeadConfig, variant: str = "sam2") -> Sam2VideoConfig:
    """``Sam2VideoConfig`` for ``cfg``; widths of MLPs scale with ``hidden_dim`` as in SAM2 (8x, 4x at 256).

    ``variant`` "sam2" is SAM2.0 (the release's weights), "sam2.1" adds the temporal encoding of object
    pointers and the occlusion embedding.
    """
    if variant not in SAM_VARIANTS:
        raise ValueError(f"mask head variant {variant!r} is not allowed; choose one of {SAM_VARIANTS}")
    _check_mask_config(cfg)
    s, c = cfg.image_size, cfg.hidden_dim
    n = len(cfg.hiera_stages)
    backbone = Sam2HieraDetConfig(
        hidden_size=cfg.hiera_embed_dim, num_attention_heads=cfg.hiera_num_heads, image_size=[s, s],
        blocks_per_stage=list(cfg.hiera_stages),
        embed_dim_per_stage=[cfg.hiera_embed_dim * 2**i for i in range(n)],
        num_attention_heads_per_stage=[cfg.hiera_num_heads * 2**i for i in range(n)],
        window_size_per_stage=list(cfg.hiera_window_spec), global_attention_blocks=list(cfg.hiera_global_attn_blocks),
        window_positional_embedding_background_size=[7, 7], num_query_pool_stages=3,
    )
    vision = Sam2VisionConfig(
        backbone_config=backbone, backbone_channel_list=list(cfg.backbone_channel_list),
        backbone_feature_sizes=[[s // 4, s // 4], [s // 8, s // 8], [s // 16, s // 16]], fpn_hidden_size=c,
        fpn_top_down_levels=[2, 3], num_feature_levels=3,
    )
    sam21 = variant == "sam2.1"
    return Sam2VideoConfig(
        # config objects, not dicts: transformers 5.17 builds a dict mask_decoder_config as a prompt-encoder config
        vision_config=vision,
        prompt_encoder_config=Sam2VideoPromptEncoderConfig(hidden_size=c, image_size=s, patch_size=16),
        mask_decoder_config=Sam2VideoMaskDecoderConfig(hidden_size=c, mlp_dim=8 * c, iou_head_hidden_dim=c),
        num_maskmem=cfg.num_maskmem, image_size=s, max_object_pointers_in_encoder=MAX_OBJECT_POINTERS,
        enable_occlusion_spatial_embedding=sam21, enable_temporal_pos_encoding_for_object_pointers=sam21,
        memory_attention_hidden_size=c, memory_attention_num_layers=cfg.memory_attention_layers,
        memory_attention_feed_forward_hidden_size=8 * c, memory_attention_rope_feat_sizes=[s // 16, s // 16],
        memory_encoder_hidden_size=c, memory_encoder_output_channels=cfg.mem_dim, mask_downsampler_embed_dim=c,
        memory_fuser_embed_dim=c, memory_fuser_intermediate_dim=4 * c,
    )


def _rope_attention(attn: Sam2VideoRoPEAttention, query: Tensor, key: Tensor, value: Tensor, cos: Tensor,
                    sin: Tensor, num_k_exclude_rope: int = 0, key_bias: Tensor | None = None) -> Tensor:
    """``Sam2VideoRoPEAttention`` with an additive key mask (transformers' forward takes none).

    query [B, Lq, C], key/value [B, Lk, Ck], key_bias [B, 1, 1, Lk] (0 or a large negative) -> [B, Lq, C].
    The RoPE is transformers' real-valued cos/sin form (no complex numbers, exports to ONNX as is).
    """
    b = query.shape[0]
    heads, head_dim = attn.num_attention_heads, attn.head_dim
    q = attn.q_proj(query).view(b, -1, heads, head_dim).transpose(1, 2)
    k = attn.k_proj(key).view(b, -1, heads, head_dim).transpose(1, 2)
    v = attn.v_proj(value).view(b, -1, heads, head_dim).transpose(1, 2)
    q, k = apply_rotary_pos_emb_2d(q, k, cos, sin, repeat_freqs_k=attn.rope_k_repeat,
                                   num_k_exclude_rope=num_k_exclude_rope)
    if key_bias is not None:
        key_bias = key_bias.to(q.dtype)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_bias, scale=attn.scaling,
                                         dropout_p=attn.dropout_p if attn.training else 0.0)
    return attn.o_proj(out.transpose(1, 2).reshape(b, -1, heads * head_dim))


def repeat_slots(x: Tensor, repeats: int) -> Tensor:
    """``x.repeat_interleave(repeats, dim=1)`` for x [B, N, ...] as Expand + Reshape: the same values with a
    static output size (``repeat_interleave`` traces to a data-dependent size under ``torch.export``)."""
    b, n = x.shape[0], x.shape[1]
    rest = tuple(x.shape[2:])
    return x[:, :, None].expand(b, n, repeats, *rest).reshape(b, n * repeats, *rest)


def preprocess_mask_frames(frames: Tensor, image_size: int) -> Tensor:
    """uint8 frames [T, H, W, 3] (RGB) -> normalized pixels [T, 3, S, S] float32 on the frames' device: bilinear
    resize with antialiasing to ``image_size`` (S), ImageNet mean/std (``MaskHead.preprocess``; the training
    collator runs it on the CPU)."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != torch.uint8:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {tuple(frames.shape)}")
    x = frames.permute(0, 3, 1, 2).to(torch.float32) / 255.0
    x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


IOU_TIE = 1e-4  # candidates whose predicted IoU is within this of the best count as tied: the first one is kept


def select_candidate(iou: Tensor) -> Tensor:
    """``iou [B, K]`` predicted IoUs of the K candidate masks -> ``[B, 1]`` index of the one kept: the first within
    ``IOU_TIE`` of the maximum (SAM2 takes the plain argmax). An untrained or saturated IoU head predicts exact ties
    (0.4999244 twice, seen in the tiny default), which a plain argmax breaks by float noise: PyTorch and ONNX Runtime
    then kept different masks. The exported graph is traced from this function, so both sides apply the same rule."""
    near = (iou >= iou.amax(dim=-1, keepdim=True) - IOU_TIE).to(iou.dtype)
    return near.argmax(dim=-1, keepdim=True)  # the first 1 (torch and ONNX ArgMax both return the first maximum)


def box_raster(boxes: Tensor, size: int) -> Tensor:
    """Normalized xyxy boxes [B, 4] -> soft box masks [B, 1, size, size] in [0, 1] (~1 inside, ~0 outside, a
    sigmoid edge of ``BOX_RASTER_EDGE`` cells), differentiable in the box; an empty box (x2 <= x1 or y2 <= y1)
    gives ~0 everywhere. Cell centres at (i + 0.5) / size, as the low-res mask grid."""
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must be normalized xyxy [B, 4], got shape {tuple(boxes.shape)}")
    centre = (torch.arange(size, device=boxes.device, dtype=boxes.dtype) + 0.5) / size  # [size]
    t = BOX_RASTER_EDGE / size
    x1, y1, x2, y2 = (boxes[:, i, None] for i in range(4))  # [B, 1] each
    fx = torch.sigmoid((centre - x1) / t) * torch.sigmoid((x2 - centre) / t)  # [B, size]
    fy = torch.sigmoid((centre - y1) / t) * torch.sigmoid((y2 - centre) / t)
    return (fy[:, :, None] * fx[:, None, :])[:, None]


class MaskHead(nn.Module):
    """SAM2 (transformers' ``Sam2VideoModel`` parts, in ``self.sam``) + TPO's prompt MLP and auxiliary box MLP.

    ``prompt_mlp``: task embedding [B, D_llm] -> [B, 3, C] sparse prompt (the release's ``track_embed``, in place
    of a box prompt's 2 corner points + 1 padding point). ``box_mlp``: task embedding -> [B, 4] normalized
    xyxy (the release's ``track_embed_decode2``), used only by the distillation loss.
    """

    def __init__(self, cfg: MaskHeadConfig, llm_dim: int, variant: str = "sam2", pointer: PointerConfig | None = None,
                 vision: VisionConfig | None = None):
        super().__init__()
        if not isinstance(llm_dim, int) or llm_dim <= 0:
            raise ValueError(f"MaskHead llm_dim must be a positive int, got {llm_dim!r}")
        self.cfg, self.variant = cfg, variant
        self.sam_config = build_sam2_video_config(cfg, variant)
        self.sam = Sam2VideoModel(self.sam_config)
        if cfg.mem_dim != 64:  # transformers hard-codes kv_in_dim=64 (SAM2's mem_dim) in the memory cross-attention
            for layer in self.sam.memory_attention.layers:
                layer.cross_attn_image = Sam2VideoRoPEAttention(self.sam_config, kv_in_dim=cfg.mem_dim,
                                                                rope_k_repeat=True)
        with torch.no_grad():  # SAM2 has one Fourier matrix for prompts and image positions (transformers keeps two
            # copies, equal only in converted checkpoints; a fresh build drew them apart, so box corners and image
            # positions were encoded with different frequencies)
            self.sam.prompt_encoder.shared_embedding.positional_embedding.copy_(
                self.sam.shared_image_embedding.positional_embedding)
        c = cfg.hidden_dim
        self.uses_patches = bool(pointer is not None and pointer.enabled)
        if cfg.box_mask_prompt and not self.uses_patches:
            raise ValueError("MaskHeadConfig.box_mask_prompt needs the pointer head (the prompt box); enable "
                             "config.pointer or set box_mask_prompt=false")
        if self.uses_patches:  # the box prompt comes from the pointer head over the ViT patch tokens
            if vision is None:
                raise ValueError("MaskHead with the pointer needs the VisionConfig (patch grid, frames, width)")
            from .region import build_pointer

            self.pointer = build_pointer(pointer, llm_dim, vision)
        else:
            self.prompt_mlp = MLP(llm_dim, cfg.prompt_mlp_dim, 3 * c)
            self.box_mlp = MLP(llm_dim, cfg.box_mlp_dim, 4)
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    # ---------------------------------------------------------------- sizes
    @property
    def image_size(self) -> int:
        return self.cfg.image_size

    @property
    def embed_size(self) -> int:
        """Side of the stride-16 embedding grid (S/16)."""
        return self.cfg.image_size // 16

    @property
    def num_pointer_tokens(self) -> int:
        """Memory tokens per object pointer (C / Cm)."""
        return self.cfg.hidden_dim // self.cfg.mem_dim

    # ---------------------------------------------------------------- TPO additions
    def sparse_prompt(self, task_embedding: Tensor, patch_tokens: Tensor | None = None) -> Tensor:
        """Task embedding [B, D_llm] (, patch tokens [B, T, P, Dv] with the pointer) -> sparse prompt [B, 3, C].

        With the pointer: SAM2's own box prompt (``embed_boxes``) of the pointer's box, differentiable (the
        mask losses reach the pointer through it); without: the release's prompt MLP."""
        return self.prompt(task_embedding, patch_tokens)[0]

    def prompt(self, task_embedding: Tensor, patch_tokens: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """-> (``sparse_prompt`` [B, 3, C], the prompt box [B, 4] the decoder also takes with ``box_mask_prompt``,
        else None)."""
        if not self.uses_patches:
            return self.prompt_mlp(task_embedding).view(task_embedding.shape[0], 3, self.cfg.hidden_dim), None
        box = self.box(task_embedding, patch_tokens)
        return self.embed_boxes(box).to(task_embedding.dtype), (box if self.uses_box_mask else None)

    def box(self, task_embedding: Tensor, patch_tokens: Tensor | None = None) -> Tensor:
        """Task embedding [B, D_llm] (, patch tokens [B, T, P, Dv]) -> normalized xyxy box [B, 4]: the release's
        auxiliary box MLP (no sigmoid), or the pointer head's box, which prompts SAM2."""
        if not self.uses_patches:
            return self.box_mlp(task_embedding)
        if patch_tokens is None:
            raise ValueError("this MaskHead prompts SAM2 from the pointer head (config pointer.enabled): pass "
                             "patch_tokens [B, T, P, Dv] from TPOModel.encode_video_patches")
        return self.pointer(task_embedding, patch_tokens)

    @torch.no_grad()
    def box_prompt_embedding(self, boxes: Tensor) -> Tensor:
        """SAM2's own sparse embedding of boxes (the distillation target): normalized xyxy [B, 4] -> [B, 3, C].

        2 corner points (labels 2, 3) + 1 padding point, in the S x S input frame, as SAM2's prompt encoder does.
        No gradient; ``embed_boxes`` is the same with one.
        """
        return self.embed_boxes(boxes)

    def embed_boxes(self, boxes: Tensor) -> Tensor:
        """``box_prompt_embedding`` with gradients (to the boxes and the prompt encoder): [B, 4] -> [B, 3, C]."""
        if boxes.ndim != 2 or boxes.shape[-1] != 4:
            raise ValueError(f"boxes must be normalized xyxy [B, 4], got shape {tuple(boxes.shape)}")
        pix = (boxes.float() * self.image_size).view(-1, 1, 4)
        return self.sam.prompt_encoder._embed_boxes(pix).view(-1, 3, self.cfg.hidden_dim)

    # ---------------------------------------------------------------- preprocessing / postprocessing
    def preprocess(self, frames: Tensor) -> Tensor:
        """uint8 frames [T, H, W, 3] (RGB) -> normalized pixels [T, 3, S, S] (bilinear resize, ImageNet mean/std),
        on the head's device (``preprocess_mask_frames`` there)."""
        return preprocess_mask_frames(frames.to(self.pixel_mean.device), self.image_size)

    @staticmethod
    def masks_at_resolution(low_res_logits: Tensor, height: int, width: int) -> Tensor:
        """Low-res logits [T, 1, s, s] -> bool masks [T, H, W] (bilinear, align_corners=False, logits > 0)."""
        up = F.interpolate(low_res_logits.float(), size=(height, width), mode="bilinear", align_corners=False)
        return up[:, 0] > MASK_THRESHOLD

    # ---------------------------------------------------------------- stage 1: image encoder
    def encode_image(self, pixels: Tensor) -> ImageFeatures:
        """Normalized pixels [B, 3, S, S] -> ``ImageFeatures`` (see its docstring for the shapes)."""
        s = self.image_size
        if pixels.ndim != 4 or tuple(pixels.shape[1:]) != (3, s, s):
            raise ValueError(f"pixels must be [B, 3, {s}, {s}], got {tuple(pixels.shape)}")
        out = self.sam.vision_encoder(pixels)
        s0, s1, s2 = out.fpn_hidden_states
        pos = out.fpn_position_encoding[-1]
        return ImageFeatures(
            feat_s0=self.sam.mask_decoder.conv_s0(s0), feat_s1=self.sam.mask_decoder.conv_s1(s1),
            embedding=s2.flatten(2).transpose(1, 2), embedding_pos=pos.flatten(2).transpose(1, 2).to(s2.dtype),
        )

    # ---------------------------------------------------------------- stage 2: memory attention
    def condition_without_memory(self, embedding: Tensor) -> Tensor:
        """Conditioning-frame path: embedding [B, HW, C] + ``no_memory_embedding`` -> [B, HW, C]."""
        return embedding + self.sam.no_memory_embedding

    def _memory_keys(self, state: MemoryState) -> tuple[Tensor, Tensor, Tensor, int]:
        """Memory + pointer tokens [B, L, Cm], their positions [B, L, Cm], key bias [B, 1, 1, L], pointer count."""
        b, m, hw, cm = state.memory.shape
        tpos_index = torch.remainder(state.memory_offsets - 1, self.cfg.num_maskmem)  # offset 0 (cond) -> M-1
        tpos = self.sam.memory_temporal_positional_encoding[:, 0, 0][tpos_index]  # [B, M, Cm]
        mem_pos = state.memory_pos + tpos[:, :, None, :]
        p, c = state.pointers.shape[1], state.pointers.shape[2]
        splits = c // cm
        ptr = state.pointers.reshape(b, p * splits, cm)
        if self.sam_config.enable_temporal_pos_encoding_for_object_pointers:
            rel = state.pointer_offsets.to(torch.float32) / float(MAX_OBJECT_POINTERS - 1)
            ptr_pos = self.sam.temporal_positional_encoding_projection_layer(
                get_1d_sine_pe(rel, dim=c).to(ptr.dtype))  # [B, P, Cm]
            ptr_pos = repeat_slots(ptr_pos, splits)
        else:
            ptr_pos = torch.zeros_like(ptr)
        keys = torch.cat([state.memory.reshape(b, m * hw, cm), ptr], dim=1)
        key_pos = torch.cat([mem_pos.reshape(b, m * hw, cm), ptr_pos], dim=1)
        valid = torch.cat([repeat_slots(state.memory_valid, hw), repeat_slots(state.pointer_valid, splits)], dim=1)
        bias = torch.zeros(valid.shape, dtype=keys.dtype, device=keys.device)
        bias = bias.masked_fill(~valid, torch.finfo(keys.dtype).min)[:, None, None, :]
        return keys, key_pos, bias, p * splits

    def memory_attention(self, embedding: Tensor, embedding_pos: Tensor, state: MemoryState) -> Tensor:
        """Condition the current frame on the memory bank: [B, HW, C] -> [B, HW, C].

        Follows ``Sam2VideoMemoryAttention`` (self-attention + cross-attention to memories and object
        pointers, axial RoPE on the spatial tokens, none on pointer tokens) with invalid slots masked out of the
        cross-attention. With no valid memory slot it returns ``condition_without_memory(embedding)``.
        """
        mattn = self.sam.memory_attention
        keys, key_pos, bias, num_ptr_tokens = self._memory_keys(state)
        cos, sin = mattn.rotary_emb(embedding, mattn.position_ids)  # [1, HW, Hd] each, float32
        x = embedding + 0.1 * embedding_pos
        for layer in mattn.layers:
            q = layer.layer_norm1(x)
            x = x + layer.dropout1(_rope_attention(layer.self_attn, q, q, q, cos, sin))
            q = layer.layer_norm2(x)
            x = x + layer.dropout2(_rope_attention(layer.cross_attn_image, q, keys + key_pos, keys, cos, sin,
                                                   num_k_exclude_rope=num_ptr_tokens, key_bias=bias))
            q = layer.layer_norm3(x)
            x = x + layer.dropout3(layer.linear2(layer.dropout(layer.activation(layer.linear1(q)))))
        x = mattn.layer_norm(x)
        has_memory = state.memory_valid.any(dim=1)[:, None, None]
        return torch.where(has_memory, x, self.condition_without_memory(embedding))

    # ---------------------------------------------------------------- stage 3: mask decoder
    def no_prompt(self, batch_size: int) -> Tensor:
        """The sparse prompt SAM2 uses on tracking frames (no clicks): 2 ``not_a_point`` tokens [B, 2, C]."""
        return self.sam.prompt_encoder.not_a_point_embed.weight[None].expand(batch_size, 2, -1)

    @property
    def uses_box_mask(self) -> bool:
        """True when the decoder takes the prompt box too (``MaskHeadConfig.box_mask_prompt``)."""
        return bool(self.cfg.box_mask_prompt)

    def dense_prompt(self, batch_size: int, box: Tensor | None = None) -> Tensor:
        """SAM2's dense prompt [B, C, h, h]: ``no_mask_embed`` everywhere, or (``box_mask_prompt``) the prompt
        encoder's ``mask_embed`` of the soft raster of ``box`` [B, 4] at the low-res size S/4 (SAM2's mask prompt of
        the box) where the box is non-empty. A SAM2 box prompt alone is a pair of corner tokens that the small
        decoder learned to ignore (its mask was the same for any box); the raster tells it where the object is."""
        c, h = self.cfg.hidden_dim, self.embed_size
        none = self.sam.prompt_encoder.no_mask_embed.weight.reshape(1, c, 1, 1).expand(batch_size, c, h, h)
        if box is None or not self.uses_box_mask:
            return none
        if box.ndim != 2 or tuple(box.shape) != (batch_size, 4):
            raise ValueError(f"box must be normalized xyxy [{batch_size}, 4], got shape {tuple(box.shape)}")
        dense = self.sam.prompt_encoder.mask_embed(box_raster(box.to(none.dtype), 4 * h))
        valid = ((box[:, 2] > box[:, 0]) & (box[:, 3] > box[:, 1])).to(none.dtype).view(-1, 1, 1, 1)
        return valid * dense + (1 - valid) * none

    def decode(self, features: ImageFeatures, conditioned: Tensor, sparse_prompt: Tensor | None = None,
               multimask: bool = True, box: Tensor | None = None) -> DecodeOutput:
        """Mask decoder on a memory-conditioned embedding [B, HW, C] -> ``DecodeOutput``.

        ``sparse_prompt`` [B, N, C] (N = 3 for TPO's prompt) or None on tracking frames (``no_prompt``).
        ``box`` [B, 4] normalized xyxy: the prompt box on the prompted frame (``dense_prompt``; used only with
        ``box_mask_prompt``); None, or an empty box (all zeros), on tracking frames.
        ``multimask`` True (SAM2 whenever a frame has no point inputs, which holds for the injected TPO prompt
        and for every tracking frame): 3 candidate masks, the one with the highest predicted IoU is kept (with
        ``multimask_select="first"``: candidate 0, for a head without a trained IoU head), its token gives the
        object pointer. False: the single-mask token, falling back to the best of 3 when
        unstable in eval (SAM2's choice for >= 2 clicks).
        """
        b, hw, c = conditioned.shape
        h = self.embed_size
        if sparse_prompt is None:
            sparse_prompt = self.no_prompt(b)
        if sparse_prompt.ndim != 3 or sparse_prompt.shape[0] != b or sparse_prompt.shape[2] != c:
            raise ValueError(f"sparse_prompt must be [{b}, N, {c}], got {tuple(sparse_prompt.shape)}")
        image = conditioned.transpose(1, 2).reshape(b, c, h, h)
        image_pe = self.sam.get_image_wide_positional_embeddings().to(image.dtype).expand(b, -1, -1, -1)
        dense = self.dense_prompt(b, box).to(image.dtype)
        masks, iou, tokens, obj = self.sam.mask_decoder(
            image_embeddings=image, image_positional_embeddings=image_pe,
            sparse_prompt_embeddings=sparse_prompt[:, None].to(image.dtype), dense_prompt_embeddings=dense,
            multimask_output=multimask, high_resolution_features=[features.feat_s0, features.feat_s1])
        masks, iou, tokens, obj = masks[:, 0], iou[:, 0], tokens[:, 0], obj[:, 0]  # [B, K, s, s] [B, K] [B, K, C]
        if self.cfg.multimask_select == "first":  # no trained IoU head (MaskHeadConfig.multimask_select)
            best = torch.zeros_like(iou[:, :1], dtype=torch.long)
        else:
            best = select_candidate(iou)  # [B, 1]; K == 1 -> 0
        low = torch.gather(masks, 1, best[:, :, None, None].expand(-1, -1, *masks.shape[-2:]))
        iou = torch.gather(iou, 1, best)
        token = torch.gather(tokens, 1, best[:, :, None].expand(-1, -1, c))[:, 0]
        present = obj > 0  # [B, 1]
        gated = torch.where(present[:, :, None, None], low, torch.full_like(low, NO_OBJ_SCORE))
        lam = present.to(token.dtype)
        pointer = lam * self.sam.object_pointer_proj(token) + (1 - lam) * self.sam.no_object_pointer
        return DecodeOutput(gated, iou, obj, pointer, low)

    # ---------------------------------------------------------------- stage 4: memory encoder
    def encode_memory(self, embedding: Tensor, low_res_logits: Tensor,
                      object_score_logits: Tensor) -> tuple[Tensor, Tensor]:
        """Encode the frame + its selected mask into a memory: -> (memory [B, HW, Cm], memory_pos [B, HW, Cm]).

        embedding [B, HW, C] (raw ``ImageFeatures.embedding``), low_res_logits [B, 1, S/4, S/4] (the gated,
        selected mask: one mask is upsampled, never 3), object_score_logits [B, 1]. As SAM2 (no clicks):
        bilinear to S x S, sigmoid * 20 - 10, mask downsampler, fuser; SAM2.1 adds the occlusion embedding.
        """
        b, hw, c = embedding.shape
        h, s = self.embed_size, self.image_size
        pix = embedding.transpose(1, 2).reshape(b, c, h, h)
        high = F.interpolate(low_res_logits, size=(s, s), mode="bilinear", align_corners=False)
        scale, bias = self.sam_config.sigmoid_scale_for_mem_enc, self.sam_config.sigmoid_bias_for_mem_enc
        mask = torch.sigmoid(high) * scale + bias
        feats, pos = self.sam.memory_encoder(pix, mask)
        occlusion = self.sam.occlusion_spatial_embedding_parameter
        if occlusion is not None:
            absent = (object_score_logits <= 0).to(feats.dtype).view(b, 1, 1, 1)
            feats = feats + absent * occlusion.view(1, -1, 1, 1)
        return feats.flatten(2).transpose(1, 2), pos.flatten(2).transpose(1, 2).to(feats.dtype).expand(b, -1, -1)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def estimate_memory_bytes(cfg: MaskHeadConfig, dtype_bytes: int = 2) -> int:
    """Bytes of one object's ring buffer: M spatial memories [HW, Cm] + P pointers [C] (``memory_pos`` is the
    same constant for every slot, so a runtime keeps one copy). 7B in bf16: 3.7 MB per object."""
    hw = (cfg.image_size // 16) ** 2
    return dtype_bytes * (cfg.num_maskmem * hw * cfg.mem_dim + MAX_OBJECT_POINTERS * cfg.hidden_dim)


__all__ = ["NO_OBJ_SCORE", "MAX_OBJECT_POINTERS", "SAM_VARIANTS", "BOX_RASTER_EDGE", "box_raster", "ImageFeatures",
           "DecodeOutput", "MemoryState", "MLP", "MaskHead", "build_sam2_video_config", "count_parameters",
           "estimate_memory_bytes"]
