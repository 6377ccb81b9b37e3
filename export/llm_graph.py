"""The LLM graph: a Mistral decoder with LoRA merged, real-valued RoPE and plain attention.

One graph serves prefill (``seq`` = prompt length, ``past`` = 0) and decode (``seq`` = 1). The KV cache
is per layer, keys stored *after* RoPE; the runtime feeds each ``present_*`` back as ``past_*``.
The token-embedding table is not in the graph (``embed_tokens.npy``): the runtime gathers rows, splices
visual tokens and task embeddings, and passes ``inputs_embeds``.

ONNX IO (``F`` = export precision's float type; ``L`` = num_layers, ``KVH`` = KV heads, ``Hd`` = head dim,
``V`` = base vocab + 7 task tokens; ``total = past + seq``):

====================  ======================  =======  ==================================================
name                  shape                   dtype    meaning
====================  ======================  =======  ==================================================
inputs_embeds         [batch, seq, D]         F        input embeddings of the new tokens
position_ids          [batch, seq]            int64    absolute positions (RoPE)
attention_mask        [batch, total]          int64    1 = attend, 0 = padding (left padding allowed)
past_key_i            [batch, KVH, past, Hd]  F        i = 0..L-1, interleaved with past_value_i
past_value_i          [batch, KVH, past, Hd]  F
logits                [batch, V]              float32  next-token logits of the LAST position only
hidden_states         [batch, seq, D]         F        final-norm hidden states (heads tap placeholders)
present_key_i         [batch, KVH, total, Hd] F        past + new, i = 0..L-1
present_value_i       [batch, KVH, total, Hd] F
====================  ======================  =======  ==================================================

Equivalence: ``LLMGraph(lm)(...)`` equals ``MistralForCausalLM`` (eager or SDPA) with a ``DynamicCache``
(see tests/test_export.py: prefill and prefill -> decode hand-off).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import MistralForCausalLM

from export.patchers import apply_rope, causal_padding_mask, grouped_attention, rope_cos_sin


class LLMGraph(nn.Module):
    """Wrapper over a (LoRA-merged) ``MistralForCausalLM``; shares its weights (no copies).

    forward(inputs_embeds [B, T, D], position_ids [B, T], attention_mask [B, P+T], past [2L x [B, KVH, P, Hd]])
    -> (logits [B, V] float32, hidden_states [B, T, D], 2L x present [B, KVH, P+T, Hd])
    """

    def __init__(self, lm: MistralForCausalLM):
        super().__init__()
        cfg = lm.config
        self.layers, self.norm, self.lm_head = lm.model.layers, lm.model.norm, lm.lm_head  # not embed_tokens
        self.num_layers = cfg.num_hidden_layers
        self.num_heads, self.num_kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.scale = self.head_dim ** -0.5
        rotary = lm.model.rotary_emb
        if getattr(rotary, "rope_type", "default") != "default":
            raise NotImplementedError(f"LLM export supports default RoPE only, got {rotary.rope_type!r}")
        # recomputed in float32 from the config: the module's buffer is rounded once the model is cast to fp16/bf16
        # (an inv_freq error of 2^-11 is an angle error of ~1 rad at position 2000)
        inv_freq, scaling = rotary.compute_default_rope_parameters(cfg)
        self.register_buffer("inv_freq", inv_freq.to(torch.float32), persistent=False)
        self.rope_scaling = float(scaling)

    def _attention(self, layer, x, cos, sin, past_k, past_v, mask):
        attn = layer.self_attn
        b, t, _ = x.shape
        q = attn.q_proj(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        k = attn.k_proj(x).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = attn.v_proj(x).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        k = torch.cat([past_k, k], dim=2)  # [B, KVH, P+T, Hd]
        v = torch.cat([past_v, v], dim=2)
        out = grouped_attention(q, k, v, mask, self.scale)
        return attn.o_proj(out), k, v

    def forward(self, inputs_embeds: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor,
                past: list[torch.Tensor]):
        assert len(past) == 2 * self.num_layers, f"expected {2 * self.num_layers} past tensors, got {len(past)}"
        x = inputs_embeds
        t = x.shape[1]
        cos, sin = rope_cos_sin(position_ids, self.inv_freq, self.rope_scaling, x.dtype)
        mask = causal_padding_mask(attention_mask, past[0].shape[2], t)
        present = []
        for i, layer in enumerate(self.layers):
            h, k, v = self._attention(layer, layer.input_layernorm(x), cos, sin, past[2 * i], past[2 * i + 1], mask)
            x = x + h
            x = x + layer.mlp(layer.post_attention_layernorm(x))
            present += [k, v]
        hidden = self.norm(x)
        logits = self.lm_head(hidden[:, -1]).to(torch.float32)  # [B, V]
        return (logits, hidden, *present)


def empty_past(num_layers: int, batch: int, kv_heads: int, head_dim: int, dtype: torch.dtype,
               length: int = 0) -> list[torch.Tensor]:
    """2L zero tensors [B, KVH, length, Hd] (length 0: an empty cache for prefill)."""
    return [torch.zeros(batch, kv_heads, length, head_dim, dtype=dtype) for _ in range(2 * num_layers)]


def cache_to_list(cache) -> list[torch.Tensor]:
    """A transformers ``DynamicCache`` -> [k0, v0, k1, v1, ...] each [B, KVH, P, Hd]."""
    return [t for layer in cache.layers for t in (layer.keys, layer.values)]
