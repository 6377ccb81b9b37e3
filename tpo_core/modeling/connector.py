"""Q-Former connector: vision tokens ``[B, N, Dv]`` -> visual LLM tokens ``[B, Nq + Nextra, D_llm]``.

``vision_layernorm`` -> BLIP-2 Q-Former (``transformers.Blip2QFormerModel``; cross-attention in layers
``0, f, 2f, ...`` with ``f = cross_attention_frequency``, as in the release) over the concatenated
``query_tokens`` and ``extra_query_tokens`` -> ``proj`` Linear ``H -> D_llm``.

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

import torch
from torch import nn
from transformers import Blip2QFormerConfig, Blip2QFormerModel

from tpo_core.config import QFormerConfig


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


class QFormerConnector(nn.Module):
    """Vision tokens ``[B, N, Dv]`` -> ``[B, Nq_total, D_llm]`` with ``Nq_total = qcfg.num_queries``."""

    def __init__(self, qcfg: QFormerConfig, vision_dim: int, llm_dim: int):
        super().__init__()
        if vision_dim <= 0 or llm_dim <= 0:
            raise ValueError(f"QFormerConnector: vision_dim={vision_dim} and llm_dim={llm_dim} must be positive")
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

    def forward(self, vision_tokens: torch.Tensor) -> torch.Tensor:
        """``vision_tokens [B, N, Dv]`` -> visual LLM tokens ``[B, Nq_total, D_llm]``."""
        if vision_tokens.dim() != 3 or vision_tokens.shape[-1] != self.vision_dim:
            raise ValueError(f"QFormerConnector expects vision tokens [B, N, {self.vision_dim}], "
                             f"got shape {tuple(vision_tokens.shape)}")
        image_embeds = self.vision_layernorm(vision_tokens)
        b = image_embeds.shape[0]
        queries = torch.cat([self.query_tokens, self.extra_query_tokens], dim=1).expand(b, -1, -1)
        out = self.qformer(query_embeds=queries, encoder_hidden_states=image_embeds, return_dict=True)
        return self.proj(out.last_hidden_state[:, : queries.shape[1]])
