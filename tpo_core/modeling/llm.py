"""The LLM with task tokens: a transformers Mistral causal LM + learnable task embeddings + LoRA.

Parameter names follow the release where cheap: ``lm`` is the (optionally peft-wrapped) causal LM,
``box_token`` / ``temporal_token`` / ``track_token`` are the learnable placeholder embeddings [1, 1, D],
``loc_encoder`` is the ``<track_box>`` input encoder (MLP 4 -> hidden -> D, ``loc_encoder.0/.2``).

Vocabulary: ids ``0..V-1`` are the base tokenizer's, ``V..V+6`` the task tokens (``tokens.TASK_TOKENS``).
New embedding and lm_head rows start at the mean of the base rows (``init_task_rows``).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import MistralConfig, MistralForCausalLM

from ..config import LLMConfig
from ..tokens import TASK_TOKENS, TaskTokenIds
from .hf_compat import cache_kwargs, output_cache


def mistral_config(cfg: LLMConfig) -> MistralConfig:
    return MistralConfig(
        vocab_size=cfg.vocab_size + len(TASK_TOKENS),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim,
        max_position_embeddings=cfg.max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        rms_norm_eps=cfg.rms_norm_eps,
        sliding_window=None,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        attn_implementation="sdpa",
    )


class TaskLLM(nn.Module):
    """Mistral LM + task embeddings. Shapes: ids [B, T] -> embeddings [B, T, D]; D = ``cfg.hidden_size``."""

    def __init__(self, cfg: LLMConfig, loc_encoder_hidden: int = 2048):
        super().__init__()
        self.cfg = cfg
        self.ids = TaskTokenIds.after_vocab(cfg.vocab_size)
        self.lm = MistralForCausalLM(mistral_config(cfg))
        d = cfg.hidden_size
        self.box_token = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.temporal_token = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.track_token = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.loc_encoder = nn.Sequential(nn.Linear(4, loc_encoder_hidden), nn.ReLU(), nn.Linear(loc_encoder_hidden, d))
        self.lora_applied = False

    # ---------------------------------------------------------------- vocabulary
    @torch.no_grad()
    def init_task_rows(self) -> None:
        """Set the 7 task-token rows of the input embedding and lm_head to the mean of the base rows."""
        v = self.cfg.vocab_size
        base = self.base_model()
        for weight in (base.get_input_embeddings().weight, base.get_output_embeddings().weight):
            weight[v:] = weight[:v].mean(dim=0, keepdim=True)

    def base_model(self) -> MistralForCausalLM:
        """The plain transformers model (under the peft wrapper once LoRA is applied)."""
        return self.lm.get_base_model() if self.lora_applied else self.lm

    def placeholder_embeddings(self) -> dict[int, torch.Tensor]:
        """Placeholder token id -> learnable embedding [D]."""
        return {self.ids.boxes: self.box_token[0, 0], self.ids.temp: self.temporal_token[0, 0],
                self.ids.tracking: self.track_token[0, 0]}

    def embed(self, input_ids: torch.Tensor, track_boxes: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings with task placeholders replaced.

        input_ids [B, T] int64; track_boxes [K, 4] normalized xyxy, one per ``<track_box>`` in reading order
        (row-major over the batch). Returns [B, T, D].
        """
        emb = self.base_model().get_input_embeddings()(input_ids)
        for token_id, vector in self.placeholder_embeddings().items():
            hit = (input_ids == token_id).unsqueeze(-1)
            emb = torch.where(hit, vector.to(emb.dtype).expand_as(emb), emb)
        n_box = int((input_ids == self.ids.track_box).sum())
        if n_box:
            if track_boxes is None or track_boxes.shape != (n_box, 4):
                got = None if track_boxes is None else tuple(track_boxes.shape)
                raise ValueError(f"the prompt holds {n_box} <track_box> tokens but track_boxes has shape {got}; "
                                 f"pass one normalized xyxy box per <track_box>: [{n_box}, 4]")
            emb = emb.clone()
            emb[input_ids == self.ids.track_box] = self.loc_encoder(track_boxes.to(emb.dtype))
        return emb

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None = None, past_key_values=None,
                position_ids: torch.Tensor | None = None, use_cache: bool = False):
        """inputs_embeds [B, T, D] -> (logits [B, T, V+7], last hidden states [B, T, D], past_key_values)."""
        out = self.lm(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **cache_kwargs(past_key_values),
                      position_ids=position_ids, use_cache=use_cache, output_hidden_states=True, return_dict=True)
        return out.logits, out.hidden_states[-1], output_cache(out)

    # ---------------------------------------------------------------- LoRA
    def apply_lora(self) -> None:
        """Wrap the LM with peft LoRA adapters as configured (r, alpha, dropout, target modules)."""
        if self.lora_applied:
            return
        from peft import LoraConfig, get_peft_model

        lcfg = self.cfg.lora
        self.lm = get_peft_model(self.lm, LoraConfig(r=lcfg.r, lora_alpha=lcfg.alpha, lora_dropout=lcfg.dropout,
                                                     target_modules=list(lcfg.target_modules), bias="none"))
        self.lora_applied = True

    def merge_lora(self) -> None:
        """Fold the LoRA deltas into the base weights and drop the peft wrapper (for export/inference)."""
        if not self.lora_applied:
            return
        self.lm = self.lm.merge_and_unload()
        self.lora_applied = False

    def lora_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.lm.named_parameters() if "lora_" in n]
