"""TPOModel: video encoder -> Q-Former connector -> LLM with task tokens -> region / temporal / mask heads.

Shapes (batch B, sampled frames T, frame size S, vision width Dv, LLM width D, visual tokens
Nv = ``config.num_visual_tokens``):
- ``encode_video(frames [B, T, 3, S, S]) -> (visual [B, Nv, D], frame_feats [B, T, Dv])``
- ``sequence_embeds(prompt, visual [B, Nv, D]) -> [B, L, D]`` with the visual tokens spliced after ``pre``
- heads read the final-layer hidden state [B, D] at a task placeholder (see ``generation.py``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from .checkpoint import EMBEDDED_DEFAULT, WEIGHTS, load_state_strict, read_checkpoint, save_checkpoint
from .config import TPOConfig, get_preset
from .modeling.connector import QFormerConnector
from .modeling.heads.mask import MaskHead
from .modeling.heads.mask_track import track
from .modeling.heads.pointer import split_patches
from .modeling.heads.region import RegionHead
from .modeling.heads.temporal import TemporalHead
from .modeling.llm import TaskLLM
from .prompting import PromptBuilder, PromptIds
from .tokens import TaskTokenIds


class TPOModel(nn.Module):
    def __init__(self, config: TPOConfig, tokenizer=None):
        super().__init__()
        from .modeling.vision import VideoEncoder

        self.config = config
        d = config.llm.hidden_size
        self.vision = VideoEncoder(config.vision)
        self.connector = QFormerConnector(config.qformer, config.vision.embed_dim, d, config.vision.tokens_per_frame,
                                          config.vision.num_frames // config.vision.tubelet_size,
                                          config.vision.patch_classes)
        self.llm = TaskLLM(config.llm, config.loc_encoder_hidden)
        self.region_head = RegionHead(config.region, d, config.pointer, config.vision)
        self.temporal_head = TemporalHead(config.temporal, d, config.vision.embed_dim)
        self.mask_head = MaskHead(config.mask, d, pointer=config.pointer, vision=config.vision)
        self.task_ids = TaskTokenIds.after_vocab(config.llm.vocab_size)
        self.tokenizer = tokenizer
        self._prompts: PromptBuilder | None = None
        self._name_avg: torch.Tensor | None = None  # [C - 1, V] averaging matrix of the class names' token ids
        self.untrained_heads: tuple[str, ...] = ()  # heads whose weights were never trained (checkpoint.json)

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def from_config(cls, config: TPOConfig, tokenizer=None, seed: int | None = 0) -> TPOModel:
        """A freshly initialized model (task rows at the mean of the base rows), tokenizer from the config."""
        if seed is not None:
            torch.manual_seed(seed)
        if tokenizer is None:
            from .data.tokenizer_build import load_tokenizer

            tokenizer = load_tokenizer(config.llm.tokenizer)
        model = cls(config, tokenizer)
        model.llm.init_task_rows()
        return model

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32) -> TPOModel:
        """A checkpoint folder -> the model, loaded strictly (missing / unexpected / mis-shaped keys are named)."""
        config, meta, tokenizer, state = read_checkpoint(path)
        model = cls(config, tokenizer)
        if meta.get("lora_applied"):
            model.llm.apply_lora()
        load_state_strict(model, state, str(path))
        model.untrained_heads = tuple(meta.get("untrained_heads", ()))
        return model.to(device=device, dtype=dtype).eval()

    def save_pretrained(self, path: str | Path, dtype: torch.dtype | None = None) -> Path:
        return save_checkpoint(self, path, dtype=dtype)

    @property
    def prompts(self) -> PromptBuilder:
        if self._prompts is None:
            if self.tokenizer is None:
                raise ValueError("this TPOModel has no tokenizer; build it with TPOModel.from_config or "
                                 "from_pretrained, or pass tokenizer=...")
            self._prompts = PromptBuilder(self.tokenizer, self.config.llm.vocab_size, self.config.num_visual_tokens,
                                          self.config.system_message, max_context=self.config.llm.max_context)
        return self._prompts

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    # ------------------------------------------------------------------ forward pieces
    def encode_video(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """frames [B, T, 3, S, S] normalized -> (visual tokens [B, Nv, D], per-frame features [B, T, Dv])."""
        visual, frame_feats, _ = self.encode_video_patches(frames)
        return visual, frame_feats

    def encode_video_patches(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """frames [B, T, 3, S, S] normalized -> (visual [B, Nv, D], frame features [B, T', Dv], patch tokens
        [B, T', P, Dv]: the video encoder's output per frame slot, what the pointer heads read)."""
        if frames.dim() != 5:
            raise ValueError(f"frames must be [B, T, 3, S, S], got shape {tuple(frames.shape)}")
        tokens = self.vision(frames)
        num_steps = frames.shape[1] // self.config.vision.tubelet_size
        patches = split_patches(tokens, num_steps)
        return self.connect(tokens), self.vision.frame_features(tokens, num_steps), patches

    def connect(self, tokens: torch.Tensor) -> torch.Tensor:
        """Vision tokens ``[B, T' * P, Dv]`` -> visual tokens ``[B, Nv, D]``: the connector, given the patch
        classifier's logits ``[B, T' * P, C]`` when it has object tokens (``config.qformer.object_tokens``)."""
        if self.connector.objects is None:
            return self.connector(tokens)
        names = self.class_name_embeddings() if self.config.qformer.object_names else None
        return self.connector(tokens, self.vision.patch_classifier(tokens), names)

    def class_name_embeddings(self) -> torch.Tensor:
        """``[C - 1, D]``: the mean LLM input embedding of each patch class name's words (``vision.
        patch_class_names``, tokenized as in a question: "red circle" -> ``▁red``, ``▁circle``)."""
        table = self.llm.base_model().get_input_embeddings().weight  # [V, D]
        if self._name_avg is None:
            if self.tokenizer is None:
                raise ValueError("object_names needs the model's tokenizer; build it with TPOModel.from_config or "
                                 "from_pretrained")
            names = self.config.vision.patch_class_names
            avg = torch.zeros(len(names), table.shape[0], device="cpu")  # [C - 1, V]: the mean over each name's ids
            for i, name in enumerate(names):
                ids = torch.tensor(self.tokenizer.encode(name, add_special_tokens=False).ids)
                avg[i].index_add_(0, ids, torch.full((len(ids),), 1.0 / len(ids)))  # a repeated word counts twice
            self._name_avg = avg
        return self._name_avg.to(table.device, table.dtype) @ table

    @property
    def uses_patches(self) -> bool:
        """True when the region / mask-prompt heads read the patch tokens (``config.pointer.enabled``)."""
        return self.region_head.uses_patches

    def sequence_embeds(self, prompt: PromptIds, visual: torch.Tensor, track_boxes: torch.Tensor | None = None,
                        with_answer: bool = False) -> torch.Tensor:
        """Input embeddings [B, L, D]: embed(pre) + visual [B, Nv, D] + embed(post [+ answer])."""
        b = visual.shape[0]
        dev = visual.device
        pre = torch.tensor(prompt.pre, device=dev).expand(b, -1)
        post_ids = prompt.post + (prompt.answer if with_answer else [])
        post = torch.tensor(post_ids, device=dev).expand(b, -1)
        ids = torch.cat([pre, post], dim=1)
        emb = self.llm.embed(ids, track_boxes)
        n_pre = len(prompt.pre)
        return torch.cat([emb[:, :n_pre], visual.to(emb.dtype), emb[:, n_pre:]], dim=1)

    def run_region(self, h: torch.Tensor, patch_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """h [B, D] (, patch_tokens [B, T', P, Dv] with the pointer) -> normalized xyxy [B, 4]."""
        return self.region_head(h, patch_tokens)

    def run_temporal(self, h: torch.Tensor, frame_feats: torch.Tensor, frame_times: torch.Tensor,
                     frame_mask: torch.Tensor | None = None):
        """h [B, D], frame_feats [B, L, Dv], frame_times [B, L] in [0, 1] -> TemporalOutput."""
        return self.temporal_head(h, frame_feats, frame_times, frame_mask)

    def run_mask(self, h: torch.Tensor, mask_pixels: torch.Tensor, patch_tokens: torch.Tensor | None = None):
        """h [1, D], mask_pixels [T, 3, Sm, Sm] normalized (, patch_tokens [1, T', P, Dv] with the pointer)
        -> TrackOutput (low-res logits [T, 1, s, s], ...)."""
        prompt, box = self.mask_head.prompt(h, patch_tokens)
        return track(self.mask_head, mask_pixels, prompt, box=box)

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def generate(self, video, prompt: str, **kwargs):
        """Reference inference; see ``generation.generate`` for the arguments and the returned ``TPOResult``."""
        from .generation import generate

        return generate(self, video, prompt, **kwargs)


def parameter_breakdown(model: TPOModel) -> dict[str, int]:
    """Parameter count per component (LoRA counted apart when applied)."""
    lora = sum(p.numel() for p in model.llm.lora_parameters())
    llm_total = sum(p.numel() for p in model.llm.parameters())
    out = {
        "vision_encoder": sum(p.numel() for p in model.vision.parameters()),
        "connector": sum(p.numel() for p in model.connector.parameters()),
        "llm": llm_total - lora,
        "lora": lora,
        "region_head": sum(p.numel() for p in model.region_head.parameters()),
        "temporal_head": sum(p.numel() for p in model.temporal_head.parameters()),
        "mask_head": sum(p.numel() for p in model.mask_head.parameters()),
    }
    out["total"] = int(np.sum(list(out.values())))
    return out


def load_model(spec: str | Path) -> TPOModel:
    """``"embedded"`` (the shipped default), ``"untrained-tiny"`` or a checkpoint folder -> TPOModel (eval, CPU).

    Without a trained embedded model installed, ``"embedded"`` falls back to the untrained tiny model (seed 0)
    with a note on stderr.
    """
    import sys

    spec = str(spec)
    if spec == "untrained-tiny" or (spec == "embedded" and not (EMBEDDED_DEFAULT / WEIGHTS).is_file()):
        if spec == "embedded":
            print("note: no trained embedded model is installed; using an untrained tiny model (seed 0)",
                  file=sys.stderr)
        return TPOModel.from_config(get_preset("tiny"), seed=0).eval()
    return TPOModel.from_pretrained(EMBEDDED_DEFAULT if spec == "embedded" else spec)
