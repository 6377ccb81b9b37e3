"""Self-validating configuration for the TPO model, with named presets.

Every sub-config validates itself in ``__post_init__`` and raises ``ValueError`` naming the field, the
value given and what is allowed. ``TPOConfig.to_json`` / ``TPOConfig.from_json`` round-trip a config;
a config JSON sits beside every checkpoint.

Presets (``get_preset(name)``):
- ``tiny``: trains on one GPU in minutes and answers on 2 CPU cores in well under a second.
- ``videochat-tpo-7b``: the official VideoChat-TPO shapes (UMT ViT-L/16, Q-Former 96 queries,
  Mistral-7B, SAM2 Hiera-L at 1024 px, a CG-DETR-sized temporal head).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONFIG_VERSION = 1

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MAX_OBJECT_POINTERS = 16  # SAM2's max_obj_ptrs_in_encoder: pointer-slot capacity of the mask memory bank
NO_OBJ_SCORE = -1024.0  # SAM2's placeholder logit for masks of frames where the object is absent
SALIENCY_FILL = -1e4  # temporal saliency of invalid frames (finite, so losses and ONNX stay NaN-free)


def _positive(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{type(obj).__name__}.{name} must be a positive int, got {value!r}")


def _choice(obj: Any, name: str, allowed: tuple) -> None:
    value = getattr(obj, name)
    if value not in allowed:
        raise ValueError(f"{type(obj).__name__}.{name}={value!r} is not allowed; choose one of {allowed}")


def _divisible(obj: Any, a: str, b: str) -> None:
    if getattr(obj, a) % getattr(obj, b) != 0:
        raise ValueError(
            f"{type(obj).__name__}.{a}={getattr(obj, a)} must be divisible by {b}={getattr(obj, b)}"
        )


def _unit_interval(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not 0.0 <= float(value) < 1.0:
            raise ValueError(f"{type(obj).__name__}.{name} must be in [0, 1), got {value!r}")


@dataclass
class VisionConfig:
    """UMT-style video ViT: frames [B, T, 3, S, S] -> tokens [B, T * (S/P)^2, D]."""

    img_size: int = 224
    patch_size: int = 16
    tubelet_size: int = 1
    num_frames: int = 16
    embed_dim: int = 1024
    depth: int = 24  # blocks in the original encoder
    num_blocks_built: int = 23  # the release builds 23 of 24 blocks (return_index -2)
    num_heads: int = 16
    mlp_ratio: float = 4.0
    pos_emb_frames: int = 4  # sinusoidal pos-emb built for this many frames, interpolated to num_frames
    layer_norm_eps: float = 1e-6
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resize: str = "bicubic"
    frame_pool: str = "mean"  # per-frame features for the temporal head: "mean" of the patches or "mean_max"
    # > 0: a linear classifier on the patch tokens (what each patch shows: background or one of the synthetic data's
    # colour x shape classes, tpo_core/data/patch_labels.py); exported only inside the object tokens. 0 = none
    patch_classes: int = 0
    # the names of classes 1 .. patch_classes - 1 (e.g. "red circle"), read by qformer.object_names; () = unnamed
    patch_class_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _positive(self, "img_size", "patch_size", "tubelet_size", "num_frames", "embed_dim", "depth",
                  "num_blocks_built", "num_heads", "pos_emb_frames")
        _divisible(self, "img_size", "patch_size")
        if not isinstance(self.patch_classes, int) or isinstance(self.patch_classes, bool) or self.patch_classes < 0:
            raise ValueError(f"VisionConfig.patch_classes must be an int >= 0 (0 = no patch classifier), "
                             f"got {self.patch_classes!r}")
        self.patch_class_names = tuple(self.patch_class_names)
        if self.patch_class_names and (len(self.patch_class_names) != self.patch_classes - 1
                                       or not all(isinstance(n, str) and n.strip() for n in self.patch_class_names)):
            raise ValueError(f"VisionConfig.patch_class_names must name every class but the background: "
                             f"{max(self.patch_classes - 1, 0)} non-empty strings, got {len(self.patch_class_names)}")
        _divisible(self, "embed_dim", "num_heads")
        _divisible(self, "num_frames", "tubelet_size")
        _choice(self, "resize", ("bicubic", "bilinear"))
        _choice(self, "frame_pool", ("mean", "mean_max"))
        if self.num_blocks_built > self.depth:
            raise ValueError(f"VisionConfig.num_blocks_built={self.num_blocks_built} exceeds depth={self.depth}")
        self.mean, self.std = tuple(self.mean), tuple(self.std)
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"VisionConfig.mean/std must be 3 values with std > 0, got {self.mean}/{self.std}")

    @property
    def tokens_per_frame(self) -> int:
        return (self.img_size // self.patch_size) ** 2

    @property
    def num_tokens(self) -> int:
        return self.tokens_per_frame * (self.num_frames // self.tubelet_size)


@dataclass
class QFormerConfig:
    """BLIP-2 Q-Former: vision tokens [B, Nt, Dv] -> queries [B, Nq, H] -> LLM space [B, Nq, D_llm].

    ``spatial_pool = g > 0`` adds, after the Nq query tokens, ``g x g`` pooled patch tokens per frame slot with
    learned position embeddings (``connector.SpatialTokens``): the LLM then sees where things are (the tiny
    preset: g = 4). 0 = the release's connector (queries only); ``TPOConfig.num_visual_tokens`` counts both.
    ``object_tokens`` adds, after those, one token per object class of the video encoder's patch classifier
    (``vision.patch_classes - 1``; ``connector.ObjectTokens``: per frame slot, the class's presence, size and
    centroid), so the LLM reads whether and where an asked object is (the tiny preset; the release has none).
    ``object_names`` adds to each object token the mean LLM input embedding of its class name's words
    (``vision.patch_class_names``): the token then shares its words with the question that asks for it.
    """

    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    cross_attention_frequency: int = 2
    num_query_tokens: int = 32
    num_extra_query_tokens: int = 64
    vision_layer_norm_eps: float = 1e-12
    dropout: float = 0.1
    spatial_pool: int = 0  # g: g x g pooled patch tokens per frame slot beside the queries (0 = none, release)
    object_tokens: bool = False  # one token per patch class (needs vision.patch_classes); False = the release
    object_names: bool = False  # add each class name's LLM word embeddings to its object token (patch_class_names)

    def __post_init__(self) -> None:
        _positive(self, "hidden_size", "num_layers", "num_heads", "intermediate_size",
                  "cross_attention_frequency", "num_query_tokens")
        if self.num_extra_query_tokens < 0:
            raise ValueError(f"QFormerConfig.num_extra_query_tokens must be >= 0, got {self.num_extra_query_tokens}")
        if not isinstance(self.spatial_pool, int) or isinstance(self.spatial_pool, bool) or self.spatial_pool < 0:
            raise ValueError(f"QFormerConfig.spatial_pool must be an int >= 0 (0 = no pooled patch tokens), "
                             f"got {self.spatial_pool!r}")
        for name in ("object_tokens", "object_names"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"QFormerConfig.{name} must be true or false, got {getattr(self, name)!r}")
        _divisible(self, "hidden_size", "num_heads")
        _unit_interval(self, "dropout")

    @property
    def num_queries(self) -> int:
        return self.num_query_tokens + self.num_extra_query_tokens


@dataclass
class LoRAConfig:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.1
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                       "down_proj", "lm_head")

    def __post_init__(self) -> None:
        _positive(self, "r", "alpha")
        _unit_interval(self, "dropout")
        self.target_modules = tuple(self.target_modules)
        allowed = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"}
        bad = set(self.target_modules) - allowed
        if bad or not self.target_modules:
            raise ValueError(f"LoRAConfig.target_modules has {sorted(bad) or 'nothing'}; allowed: {sorted(allowed)}")


@dataclass
class LLMConfig:
    """A Mistral-architecture causal LM. ``vocab_size`` is the base vocabulary; the 7 task tokens follow."""

    vocab_size: int = 32000
    hidden_size: int = 4096
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int = 8
    intermediate_size: int = 14336
    max_position_embeddings: int = 32768
    max_context: int = 2048  # KV capacity used by generation and exported engines
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-5
    tokenizer: str = "mistral-v0.2"  # "embedded-tiny" or a directory with tokenizer files
    lora: LoRAConfig = field(default_factory=LoRAConfig)

    def __post_init__(self) -> None:
        if isinstance(self.lora, dict):
            self.lora = LoRAConfig(**self.lora)
        _positive(self, "vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads",
                  "intermediate_size", "max_position_embeddings", "max_context")
        _divisible(self, "hidden_size", "num_heads")
        _divisible(self, "num_heads", "num_kv_heads")
        if self.max_context > self.max_position_embeddings:
            raise ValueError(f"LLMConfig.max_context={self.max_context} exceeds "
                             f"max_position_embeddings={self.max_position_embeddings}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


@dataclass
class RegionHeadConfig:
    """MLP on the task embedding [B, D_llm] -> normalized xyxy [B, 4] (no sigmoid, as released)."""

    hidden_dim: int = 2048

    def __post_init__(self) -> None:
        _positive(self, "hidden_dim")


@dataclass
class PointerConfig:
    """The pointer head (``modeling/heads/pointer.py``): the region box and the mask head's SAM2 box prompt from
    an attention read of the task embedding over the ViT patch tokens ``[B, T, P, Dv]``. Off (the release and
    every checkpoint saved before it existed): the region MLP and the mask prompt MLP on the task embedding alone.
    """

    enabled: bool = False
    dim: int = 128
    num_heads: int = 4
    num_layers: int = 2

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ValueError(f"PointerConfig.enabled must be true or false, got {self.enabled!r}")
        _positive(self, "dim", "num_heads", "num_layers")
        _divisible(self, "dim", "num_heads")
        if self.dim % 2:
            raise ValueError(f"PointerConfig.dim must be even (2D sinusoid init), got {self.dim}")


@dataclass
class TemporalHeadConfig:
    """DETR-style span decoder (CG-DETR sized) over per-frame features + the task embedding."""

    d_model: int = 256
    num_heads: int = 8
    num_encoder_layers: int = 3
    num_decoder_layers: int = 3
    ffn_dim: int = 1024
    num_queries: int = 10
    num_dummy_tokens: int = 45
    max_clips: int = 75  # the most per-frame feature rows the head accepts
    dropout: float = 0.1
    round_to_s: float = 1.0  # post-processing rounds span ends to this many seconds (release: 1 s)

    def __post_init__(self) -> None:
        if not self.round_to_s >= 0:
            raise ValueError(f"TemporalHeadConfig.round_to_s must be >= 0 (0 = no rounding), got {self.round_to_s}")
        _positive(self, "d_model", "num_heads", "num_encoder_layers", "num_decoder_layers", "ffn_dim",
                  "num_queries", "num_dummy_tokens", "max_clips")
        _divisible(self, "d_model", "num_heads")
        _unit_interval(self, "dropout")


MULTIMASK_SELECT = ("iou", "first")


@dataclass
class MaskHeadConfig:
    """SAM2-style mask head (image encoder, prompt MLP, mask decoder, memory attention/encoder).

    ``hiera_*`` fields describe the image encoder's trunk; ``hidden_dim`` is the prompt/decoder width
    (SAM2: 256, so the sparse prompt is [3, 256]); ``mem_dim`` the memory width (SAM2: 64);
    ``num_maskmem`` the memory-bank capacity in frames (SAM2: 7).
    """

    image_size: int = 1024
    hiera_embed_dim: int = 144
    hiera_num_heads: int = 2
    hiera_stages: tuple[int, ...] = (2, 6, 36, 4)
    hiera_global_attn_blocks: tuple[int, ...] = (23, 33, 43)
    hiera_window_spec: tuple[int, ...] = (8, 4, 16, 8)
    backbone_channel_list: tuple[int, ...] = (1152, 576, 288, 144)
    hidden_dim: int = 256
    mem_dim: int = 64
    num_maskmem: int = 7
    memory_attention_layers: int = 4
    prompt_mlp_dim: int = 4096  # hidden width of MLP(task embedding) -> [3, hidden_dim] (release: track_embed)
    box_mlp_dim: int = 4096  # hidden width of the auxiliary box MLP (release: track_embed_decode2, 4096 -> 4096 -> 4)
    # the prompted frame also gets SAM2's *mask* prompt of the prompt box (a soft box raster through the prompt
    # encoder's mask_embed, added to the image embedding): needs the pointer (a box). Off in the release (7B).
    box_mask_prompt: bool = False
    # which of SAM2's 3 multimask candidates is kept: "iou" = the highest predicted IoU (SAM2; needs a trained IoU
    # head: the release's), "first" = candidate 0 always (the tiny preset, trained without an IoU loss: its IoU head
    # is untrained, so "iou" picked by float noise, candidate 0 in bf16 training and mostly 2 in fp32 inference)
    multimask_select: str = "iou"

    def __post_init__(self) -> None:
        _positive(self, "image_size", "hiera_embed_dim", "hiera_num_heads", "hidden_dim", "mem_dim",
                  "num_maskmem", "memory_attention_layers", "prompt_mlp_dim", "box_mlp_dim")
        for name in ("hiera_stages", "hiera_global_attn_blocks", "hiera_window_spec", "backbone_channel_list"):
            setattr(self, name, tuple(getattr(self, name)))
        if len(self.hiera_stages) != len(self.hiera_window_spec) or len(self.hiera_stages) != len(
            self.backbone_channel_list
        ):
            raise ValueError("MaskHeadConfig: hiera_stages, hiera_window_spec and backbone_channel_list must "
                             f"have equal lengths, got {self.hiera_stages}, {self.hiera_window_spec}, "
                             f"{self.backbone_channel_list}")
        if self.image_size % 32:
            raise ValueError(f"MaskHeadConfig.image_size must be a multiple of 32, got {self.image_size}")
        if self.multimask_select not in MULTIMASK_SELECT:
            raise ValueError(f"MaskHeadConfig.multimask_select={self.multimask_select!r}; choose one of "
                             f"{MULTIMASK_SELECT}")

    @property
    def low_res_size(self) -> int:
        return self.image_size // 4


@dataclass
class TPOConfig:
    """The whole model. ``task_token_ids`` are derived: ids right after ``llm.vocab_size``."""

    preset: str = "custom"
    vision: VisionConfig = field(default_factory=VisionConfig)
    qformer: QFormerConfig = field(default_factory=QFormerConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    region: RegionHeadConfig = field(default_factory=RegionHeadConfig)
    temporal: TemporalHeadConfig = field(default_factory=TemporalHeadConfig)
    mask: MaskHeadConfig = field(default_factory=MaskHeadConfig)
    pointer: PointerConfig = field(default_factory=PointerConfig)  # off: the release's heads
    loc_encoder_hidden: int = 2048  # <track_box> input encoder: MLP 4 -> hidden -> D_llm
    max_new_tokens: int = 200
    system_message: str = ""
    version: int = CONFIG_VERSION

    _SUBS = {"vision": VisionConfig, "qformer": QFormerConfig, "llm": LLMConfig, "region": RegionHeadConfig,
             "temporal": TemporalHeadConfig, "mask": MaskHeadConfig,
             "pointer": PointerConfig}

    def __post_init__(self) -> None:
        for name, cls in self._SUBS.items():
            value = getattr(self, name)
            if isinstance(value, dict):
                setattr(self, name, cls(**value))
            elif not isinstance(value, cls):
                raise ValueError(f"TPOConfig.{name} must be a {cls.__name__} or dict, got {type(value).__name__}")
        _positive(self, "loc_encoder_hidden", "max_new_tokens")
        side = self.vision.img_size // self.vision.patch_size
        if self.qformer.spatial_pool and side % self.qformer.spatial_pool:
            raise ValueError(f"QFormerConfig.spatial_pool={self.qformer.spatial_pool} must divide the patch grid "
                             f"side {side} (vision img_size {self.vision.img_size} / patch_size "
                             f"{self.vision.patch_size}); choose a divisor of {side} or 0")
        if self.qformer.object_tokens and self.vision.patch_classes < 2:
            raise ValueError("QFormerConfig.object_tokens reads the video encoder's patch classifier: set "
                             f"vision.patch_classes >= 2 (got {self.vision.patch_classes}) or object_tokens=false")
        if self.qformer.object_names and not (self.qformer.object_tokens and self.vision.patch_class_names):
            raise ValueError("QFormerConfig.object_names needs object_tokens=true and vision.patch_class_names (the "
                             "name of every patch class but the background); or set object_names=false")
        if self.mask.box_mask_prompt and not self.pointer.enabled:
            raise ValueError("MaskHeadConfig.box_mask_prompt needs a prompt box, which only the pointer head gives: "
                             "set pointer.enabled=true or box_mask_prompt=false")
        if self.version != CONFIG_VERSION:
            raise ValueError(f"TPOConfig.version={self.version} is not supported (this toolkit reads "
                             f"{CONFIG_VERSION}); re-save the config with this toolkit")

    @property
    def num_visual_tokens(self) -> int:
        """Visual tokens the connector hands the LLM (``Nv``): the Q-Former queries, then ``spatial_pool^2``
        pooled patch tokens per frame slot (``num_frames // tubelet_size`` slots), then (``object_tokens``) one
        token per object class (``vision.patch_classes - 1``)."""
        slots = self.vision.num_frames // self.vision.tubelet_size
        objects = self.vision.patch_classes - 1 if self.qformer.object_tokens else 0
        return self.qformer.num_queries + slots * self.qformer.spatial_pool ** 2 + objects

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_dict(cls, data: dict) -> TPOConfig:
        data = upgrade_config_dict(data)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"TPOConfig: unknown keys {sorted(unknown)}; known keys: {sorted(known)}")
        return cls(**data)

    @classmethod
    def from_json(cls, path: str | Path) -> TPOConfig:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist; a checkpoint directory must hold "
                                    "the config.json written by `tpo train`")
        return cls.from_dict(json.loads(path.read_text()))


def upgrade_config_dict(data: dict) -> dict:
    """Fill fields added after a config was written, with the values the older code implied.

    - ``mask.box_mlp_dim`` (added with ``tpo convert``): older code built the box MLP with hidden width
      ``prompt_mlp_dim // 2``.
    """
    data = dict(data)
    mask = data.get("mask")
    if isinstance(mask, dict) and "box_mlp_dim" not in mask and "prompt_mlp_dim" in mask:
        data["mask"] = {**mask, "box_mlp_dim": int(mask["prompt_mlp_dim"]) // 2}
    return data


def tiny_config() -> TPOConfig:
    from .data.patch_labels import CLASS_NAMES

    return TPOConfig(
        preset="tiny",
        vision=VisionConfig(img_size=64, patch_size=8, num_frames=8, embed_dim=128, depth=4, num_blocks_built=4,
                            num_heads=4, pos_emb_frames=4, frame_pool="mean_max",
                            patch_classes=33,  # = data.patch_labels.NUM_CLASSES (background + 8 colours x 4 shapes)
                            patch_class_names=CLASS_NAMES),
        qformer=QFormerConfig(hidden_size=128, num_layers=2, num_heads=4, intermediate_size=256,
                              num_query_tokens=8, num_extra_query_tokens=8, dropout=0.0, spatial_pool=4,
                              object_tokens=True),
        llm=LLMConfig(vocab_size=1024, hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=2,
                      intermediate_size=512, max_position_embeddings=512, max_context=320, rope_theta=10000.0,
                      tokenizer="embedded-tiny", lora=LoRAConfig(r=8, alpha=16, dropout=0.05)),
        region=RegionHeadConfig(hidden_dim=256),
        temporal=TemporalHeadConfig(d_model=64, num_heads=4, num_encoder_layers=2, num_decoder_layers=2,
                                    ffn_dim=128, num_queries=10, num_dummy_tokens=4, max_clips=32, dropout=0.0,
                                    round_to_s=0.1),
        mask=MaskHeadConfig(image_size=128, hiera_embed_dim=16, hiera_num_heads=1, hiera_stages=(1, 1, 2, 1),
                            hiera_global_attn_blocks=(3,), hiera_window_spec=(4, 4, 4, 4),
                            backbone_channel_list=(128, 64, 32, 16), hidden_dim=64, mem_dim=16, num_maskmem=7,
                            memory_attention_layers=1, prompt_mlp_dim=256, box_mlp_dim=128, box_mask_prompt=True,
                            multimask_select="first"),
        pointer=PointerConfig(enabled=True, dim=128, num_heads=4, num_layers=2),
        loc_encoder_hidden=256,
        max_new_tokens=32,
    )


def videochat_tpo_7b_config() -> TPOConfig:
    return TPOConfig(preset="videochat-tpo-7b")


PRESETS = {"tiny": tiny_config, "videochat-tpo-7b": videochat_tpo_7b_config}


def get_preset(name: str) -> TPOConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]()
