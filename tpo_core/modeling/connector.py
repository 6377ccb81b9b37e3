"""Q-Former connector: vision tokens ``[B, N, Dv]`` -> visual LLM tokens ``[B, Nv, D_llm]``.

``vision_layernorm`` -> BLIP-2 Q-Former (``transformers.Blip2QFormerModel``; cross-attention in layers
``0, f, 2f, ...`` with ``f = cross_attention_frequency``, as in the release) over the concatenated
``query_tokens`` and ``extra_query_tokens`` -> ``proj`` Linear ``H -> D_llm``: ``Nq`` tokens.

With ``QFormerConfig.spatial_pool = g > 0`` (the tiny preset; the release has none) ``SpatialTokens`` appends
``g x g`` pooled patch tokens per frame slot: ``Nv = Nq + T' * g^2`` (``TPOConfig.num_visual_tokens``). The
Q-Former's one cross-attention layer of the tiny preset attended almost evenly over all 512 patch tokens, so
its queries carried no position (a linear probe of the object layout from them: R^2 0.01); the pooled tokens
keep it, with an explicit position embedding the LLM can read.

With ``QFormerConfig.object_tokens`` (the tiny preset; needs the video encoder's ``patch_classifier``)
``ObjectTokens`` appends one token per object class (``C - 1`` tokens, ``C = vision.patch_classes``), made from
the classifier's per-patch class probabilities: per frame slot, the class's presence, area and centroid. The
LLM then answers "is the red circle there / where / does it move" by reading a fixed token instead of
searching 128 pooled tokens for matching features (docs/architecture.md, "Object tokens").

Parameter names versus the official checkpoint:

===============================================  ===============================================
official                                         here (``QFormerConnector``)
===============================================  ===============================================
``vision_layernorm.*``                           ``vision_layernorm.*``
``query_tokens``, ``extra_query_tokens``         ``query_tokens``, ``extra_query_tokens``
``qformer.bert.embeddings.LayerNorm.*``          ``qformer.layernorm.*``
``qformer.bert.encoder.layer.N.*``               ``qformer.encoder.layer.N.*``, except:
``...attention.self.{query,key,value}.*``        ``...attention.attention.{query,key,value}.*``
``...crossattention.self.{query,key,value}.*``   ``...crossattention.attention.{query,key,value}.*``
``project_up.*``                                 ``proj.*``
===============================================  ===============================================

Unused by the query-only path, hence absent here (a loader drops them): ``qformer.bert.embeddings.
word_embeddings / position_embeddings / position_ids`` and the text-branch FFN ``qformer.bert.encoder.
layer.N.intermediate.*`` / ``output.*`` (the query FFN is ``intermediate_query`` / ``output_query``):
the official 329 ``qformer.bert.*`` tensors minus these 75 are the 254 tensors of this module, 1:1.
``project_down`` and ``merge_proj`` belong to the release's other paths, not to this connector.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import Blip2QFormerConfig, Blip2QFormerModel

from tpo_core.config import QFormerConfig
from tpo_core.modeling.heads.pointer import patch_centres
from tpo_core.modeling.vision import sinusoid_table


def qformer_hf_config(qcfg: QFormerConfig, vision_dim: int) -> Blip2QFormerConfig:
    """The ``Blip2QFormerConfig`` matching ``qcfg`` (eager attention, query-only, no text branch)."""
    cfg = Blip2QFormerConfig(
        hidden_size=qcfg.hidden_size,
        num_hidden_layers=qcfg.num_layers,
        num_attention_heads=qcfg.num_heads,
        intermediate_size=qcfg.intermediate_size,
        hidden_act="gelu",
        hidden_dropout_prob=qcfg.dropout,
        attention_probs_dropout_prob=qcfg.dropout,
        layer_norm_eps=1e-12,
        cross_attention_frequency=qcfg.cross_attention_frequency,
        encoder_hidden_size=vision_dim,
        use_qformer_text_input=False,
    )
    cfg._attn_implementation = "eager"
    return cfg


class SpatialTokens(nn.Module):
    """Pooled patch tokens: vision tokens ``[B, T' * S * S, Dv]`` (``S x S`` patches per frame slot) ->
    ``[B, T' * g * g, D_llm]``: each slot's patch grid averaged over ``(S/g) x (S/g)`` cells -> LayerNorm ->
    Linear ``Dv -> D_llm`` -> + a learned position embedding per (slot, row, column), initialized with three
    sinusoid tables (time, row, column) side by side. Order: slot-major, then row, then column.
    """

    def __init__(self, grid: int, vision_dim: int, llm_dim: int, tokens_per_frame: int, num_slots: int):
        super().__init__()
        side = math.isqrt(tokens_per_frame)
        if grid <= 0 or side * side != tokens_per_frame or side % grid:
            raise ValueError(f"SpatialTokens: a {grid} x {grid} grid needs a square patch grid whose side is a "
                             f"multiple of {grid}; got {tokens_per_frame} tokens per frame")
        self.grid, self.side, self.slots, self.vision_dim = grid, side, num_slots, vision_dim
        self.norm = nn.LayerNorm(vision_dim)
        self.proj = nn.Linear(vision_dim, llm_dim)
        self.pos = nn.Parameter(self.position_table(num_slots, grid, llm_dim))

    @staticmethod
    def position_table(slots: int, grid: int, dim: int) -> torch.Tensor:
        """``[slots * grid * grid, dim]``: sinusoids of the slot, the row and the column in three channel blocks
        (scaled by 0.5, about the size of the projected content at initialization)."""
        d_t = d_r = 2 * (dim // 6)
        d_c = dim - d_t - d_r
        t = sinusoid_table(slots, d_t)[:, None, None, :].expand(slots, grid, grid, d_t)
        r = sinusoid_table(grid, d_r)[None, :, None, :].expand(slots, grid, grid, d_r)
        c = sinusoid_table(grid, d_c)[None, None, :, :].expand(slots, grid, grid, d_c)
        return 0.5 * torch.cat([t, r, c], dim=-1).reshape(slots * grid * grid, dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens [B, T' * S * S, Dv]`` -> ``[B, T' * g * g, D_llm]``."""
        b, n, d = tokens.shape
        s, g = self.side, self.grid
        if n != self.slots * s * s:
            raise ValueError(f"SpatialTokens: got {n} vision tokens; expected {self.slots} frame slots x {s * s} "
                             f"patches (the connector with spatial_pool={g} needs all {self.slots} frames)")
        k = s // g
        x = tokens.reshape(b, self.slots, g, k, g, k, d).mean(dim=(3, 5))  # [B, T', g, g, Dv]
        x = self.proj(self.norm(x.reshape(b, self.slots * g * g, d)))
        return x + self.pos.to(x.dtype)


class ObjectTokens(nn.Module):
    """Per-class object tokens: patch-classifier logits ``[B, T' * P, C]`` (class 0 = background) ->
    ``[B, C - 1, D_llm]``, one token per object class ``1 .. C-1`` in class order.

    Per class ``k`` and frame slot ``t``, from the softmax probabilities ``p[t, i, k]`` over the ``P = S x S``
    patches ``i`` (centres ``(x_i, y_i)`` in ``[0, 1]``): presence ``max_i p``, size ``sqrt(mean_i p)``, and the
    centroid ``sum_i p * (x_i, y_i) / sum_i p`` (0.5 where the class is absent), centred to ``[-1, 1]``. The
    ``4 T'`` numbers of a class -> MLP ``4 T' -> D_llm -> D_llm`` -> + a class embedding (initialized with a
    sinusoid table, 0.5 scale, like ``SpatialTokens``' positions) [+ the class names' word embeddings ``[C - 1, D]``
    (``QFormerConfig.object_names``), scaled to RMS 0.5]. The logits are detached: the tokens read the classifier
    the ``patch`` loss trains, and the LM loss does not bend its classes.
    """

    EPS = 1e-3  # pseudo-mass at the frame centre: the centroid of an absent class is 0.5

    def __init__(self, num_classes: int, tokens_per_frame: int, num_slots: int, llm_dim: int):
        super().__init__()
        side = math.isqrt(tokens_per_frame)
        if num_classes < 2 or side * side != tokens_per_frame:
            raise ValueError(f"ObjectTokens needs >= 2 patch classes (background + objects) and a square patch "
                             f"grid; got {num_classes} classes, {tokens_per_frame} patches per frame")
        self.classes, self.slots, self.patches, self.side = num_classes, num_slots, tokens_per_frame, side
        self.register_buffer("xy", patch_centres(side), persistent=False)  # [P, 2] (x, y), on CPU even under meta
        self.mlp = nn.Sequential(nn.Linear(4 * num_slots, llm_dim), nn.GELU(), nn.Linear(llm_dim, llm_dim))
        self.embed = nn.Parameter(0.5 * sinusoid_table(num_classes - 1, llm_dim))

    def features(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits [B, T' * P, C]`` -> ``[B, C - 1, T', 4]``: (presence, size, centroid x, centroid y) per slot."""
        b, n, c = logits.shape
        if n != self.slots * self.patches or c != self.classes:
            raise ValueError(f"ObjectTokens: got patch logits {tuple(logits.shape)}; expected [B, "
                             f"{self.slots * self.patches}, {self.classes}] (T'={self.slots} slots x P={self.patches} "
                             f"patches, C={self.classes} classes)")
        p = logits.detach().float().softmax(-1).reshape(b, self.slots, self.patches, c)[..., 1:]  # [B, T', P, K]
        mass = p.sum(dim=2)  # [B, T', K]
        moments = torch.einsum("btpk,pd->btkd", p, self.xy.to(p.dtype))  # [B, T', K, 2]
        centroid = (moments + 0.5 * self.EPS) / (mass + self.EPS)[..., None]
        feats = torch.cat([p.amax(dim=2)[..., None], (mass / self.patches).sqrt()[..., None],
                           2.0 * centroid - 1.0], dim=-1)  # [B, T', K, 4]
        return feats.permute(0, 2, 1, 3)

    def forward(self, logits: torch.Tensor, names: torch.Tensor | None = None) -> torch.Tensor:
        """``logits [B, T' * P, C]`` (, ``names [C - 1, D_llm]``: each class name's mean word embedding) -> object
        tokens ``[B, C - 1, D_llm]``."""
        feats = self.features(logits)
        x = self.mlp(feats.flatten(2).to(self.embed.dtype))
        x = x + self.embed.to(x.dtype)
        if names is None:
            return x
        if names.shape != self.embed.shape:
            raise ValueError(f"ObjectTokens: got class-name embeddings {tuple(names.shape)}; expected "
                             f"{tuple(self.embed.shape)} (one per object class)")
        names = names.float()
        names = 0.5 * names / names.pow(2).mean(dim=-1, keepdim=True).add(1e-12).sqrt()
        return x + names.to(x.dtype)


class QFormerConnector(nn.Module):
    """Vision tokens ``[B, N, Dv]`` -> ``[B, Nv, D_llm]``: ``qcfg.num_queries`` Q-Former tokens, then (with
    ``qcfg.spatial_pool``) the ``SpatialTokens`` of the ``num_slots`` frame slots, then (with
    ``qcfg.object_tokens``) the ``ObjectTokens`` of the ``patch_classes - 1`` object classes."""

    def __init__(self, qcfg: QFormerConfig, vision_dim: int, llm_dim: int, tokens_per_frame: int | None = None,
                 num_slots: int | None = None, patch_classes: int = 0):
        super().__init__()
        if vision_dim <= 0 or llm_dim <= 0:
            raise ValueError(f"QFormerConnector: vision_dim={vision_dim} and llm_dim={llm_dim} must be positive")
        if (qcfg.spatial_pool or qcfg.object_tokens) and (tokens_per_frame is None or num_slots is None):
            raise ValueError("QFormerConnector: spatial_pool > 0 or object_tokens needs tokens_per_frame and "
                             "num_slots (the vision encoder's patches per frame and frame slots)")
        self.qcfg = qcfg
        self.vision_dim = vision_dim
        h = qcfg.hidden_size
        self.vision_layernorm = nn.LayerNorm(vision_dim, eps=qcfg.vision_layer_norm_eps)
        self.query_tokens = nn.Parameter(torch.empty(1, qcfg.num_query_tokens, h))
        self.extra_query_tokens = nn.Parameter(torch.empty(1, qcfg.num_extra_query_tokens, h))
        nn.init.normal_(self.query_tokens, std=0.02)
        nn.init.normal_(self.extra_query_tokens, std=0.02)
        self.qformer = Blip2QFormerModel(qformer_hf_config(qcfg, vision_dim))
        self.proj = nn.Linear(h, llm_dim)
        self.spatial = (SpatialTokens(qcfg.spatial_pool, vision_dim, llm_dim, tokens_per_frame, num_slots)
                        if qcfg.spatial_pool else None)
        self.objects = (ObjectTokens(patch_classes, tokens_per_frame, num_slots, llm_dim)
                        if qcfg.object_tokens else None)

    def forward(self, vision_tokens: torch.Tensor, patch_logits: torch.Tensor | None = None,
                class_names: torch.Tensor | None = None) -> torch.Tensor:
        """``vision_tokens [B, N, Dv]`` (, ``patch_logits [B, N, C]`` of the video encoder's ``patch_classifier``,
        needed with ``object_tokens``; ``class_names [C - 1, D_llm]`` with ``object_names``) -> visual LLM tokens
        ``[B, Nv, D_llm]`` (queries, pooled, object tokens)."""
        if vision_tokens.dim() != 3 or vision_tokens.shape[-1] != self.vision_dim:
            raise ValueError(f"QFormerConnector expects vision tokens [B, N, {self.vision_dim}], "
                             f"got shape {tuple(vision_tokens.shape)}")
        image_embeds = self.vision_layernorm(vision_tokens)
        b = image_embeds.shape[0]
        queries = torch.cat([self.query_tokens, self.extra_query_tokens], dim=1).expand(b, -1, -1)
        out = self.qformer(query_embeds=queries, encoder_hidden_states=image_embeds, return_dict=True)
        parts = [self.proj(out.last_hidden_state[:, : queries.shape[1]])]
        if self.spatial is not None:
            parts.append(self.spatial(vision_tokens))
        if self.objects is not None:
            if patch_logits is None:
                raise ValueError("QFormerConnector: object_tokens needs patch_logits [B, N, C] from the video "
                                 "encoder's patch_classifier (TPOModel.connect passes them)")
            if self.qcfg.object_names and class_names is None:
                raise ValueError("QFormerConnector: object_names needs class_names [C - 1, D_llm] (TPOModel.connect "
                                 "passes the LLM's embeddings of the class names)")
            parts.append(self.objects(patch_logits, class_names if self.qcfg.object_names else None))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
