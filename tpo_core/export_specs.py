"""Typed IO of every exportable component, declared once, model side (pure data, no wrappers, no torch).

``component_io(config, limits)`` returns, per component, its ordered inputs and outputs (name, dtype,
dims) and its shape profiles (``{profile: {dim: (min, opt, max)}}``) derived from the config. The
exporter (``export/``) turns these into the manifest's ``ComponentSpec`` and asserts that every ONNX graph's
IO names and ranks match them; the runtime only ever reads the manifest.

Dtypes: ``"float"`` is the export precision's float type (float32 / float16 / bfloat16), resolved at
export time; every other dtype is literal. Dims: ints are static, strings are symbolic and must appear
in each profile of the component (dims used only by outputs are derived, e.g. ``total = past + seq``).

Symbolic dims: ``batch`` (requests), ``seq`` (new LLM tokens), ``past`` (cached LLM tokens),
``total`` (``past + seq``), ``clips`` (temporal-head frames), ``objects`` (mask-head objects), ``images``
(frames through the mask image encoder at once), ``prompt_tokens`` (sparse prompt tokens), ``boxes``
(``<track_box>`` boxes).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from runtime.contract.prompt import BEGIN_TO_TASK, INPUT_TOKENS, PLACEHOLDER_EMBEDDING, TASK_TOKENS, release_template
from runtime.manifest import (
    GenerationSpec,
    HeadsSpec,
    KVSpec,
    MaskSpec,
    PreprocessSpec,
    TaskToken,
    TemporalHeadSpec,
    TokenizerSpec,
)

from .config import IMAGENET_MEAN, IMAGENET_STD, MAX_OBJECT_POINTERS, NO_OBJ_SCORE, SALIENCY_FILL, TPOConfig

FLOAT = "float"
PREFILL_TEXT_TOKENS = 48  # text tokens of a typical prompt: the prefill profile's opt = visual tokens + this


@dataclass(frozen=True)
class IOSpec:
    """One graph input or output: ``dims`` are ints (static) or symbolic names."""

    name: str
    dtype: str
    dims: tuple[int | str, ...]
    doc: str = ""


@dataclass(frozen=True)
class ComponentIO:
    """One component graph: ordered IO, shape profiles (``{profile: {dim: (min, opt, max)}}``), a summary."""

    name: str
    inputs: tuple[IOSpec, ...]
    outputs: tuple[IOSpec, ...]
    profiles: dict[str, dict[str, tuple[int, int, int]]]
    doc: str = ""
    optional: bool = False  # not in the manifest's required set

    def input_names(self) -> list[str]:
        return [s.name for s in self.inputs]

    def output_names(self) -> list[str]:
        return [s.name for s in self.outputs]


@dataclass(frozen=True)
class ExportLimits:
    """Profile upper bounds not fixed by the model config (the LLM context comes from ``llm.max_context``)."""

    max_batch: int = 1  # requests per LLM / vision / head call
    max_objects: int = 4  # objects tracked at once by the mask graphs
    max_images: int = 8  # frames per mask image-encoder call
    max_prompt_tokens: int = 8  # sparse prompt tokens per object (TPO: 3 on the prompted frame, 2 after)
    max_track_boxes: int = 8
    prefill_opt: int | None = None  # default: the prompt with the visual tokens and ~48 text tokens

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_objects", "max_images", "max_prompt_tokens", "max_track_boxes"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"ExportLimits.{name} must be a positive int, got {value!r}")


def _rng(lo: int, opt: int, hi: int) -> tuple[int, int, int]:
    opt = max(lo, min(opt, hi))
    return (lo, opt, hi)


def kv_names(num_layers: int) -> tuple[list[str], list[str]]:
    """(past names, present names), interleaved key/value per layer: past_key_0, past_value_0, ..."""
    past = [f"past_{kind}_{i}" for i in range(num_layers) for kind in ("key", "value")]
    return past, [n.replace("past_", "present_", 1) for n in past]


def patch_tokens_spec(cfg: TPOConfig, batch: str = "batch") -> IOSpec:
    """``patch_tokens [batch, T', P, Dv]``: the video encoder's tokens per frame slot (``T' = T // tubelet``,
    ``P = (S / patch)^2``), an output of ``vision`` and an input of the pointer heads (``config.pointer``)."""
    v = cfg.vision
    return IOSpec("patch_tokens", FLOAT, (batch, v.num_frames // v.tubelet_size, v.tokens_per_frame, v.embed_dim),
                  "video encoder tokens per frame slot, row-major patches (pointer heads' input)")


def _vision(cfg: TPOConfig, lim: ExportLimits) -> ComponentIO:
    v, d = cfg.vision, cfg.llm.hidden_size
    t = v.num_frames
    outputs = (IOSpec("visual_tokens", FLOAT, ("batch", cfg.num_visual_tokens, d), "visual tokens in LLM space"),
               IOSpec("frame_features", FLOAT, ("batch", t // v.tubelet_size, v.embed_dim),
                      "per-frame encoder features (temporal head input)"))
    if cfg.pointer.enabled:
        outputs += (patch_tokens_spec(cfg),)
    return ComponentIO(
        "vision",
        (IOSpec("frames", "float32", ("batch", t, 3, v.img_size, v.img_size),
                "RGB frames resized to the model size, values 0..255 (not normalized: the graph normalizes)"),),
        outputs,
        {"default": {"batch": _rng(1, 1, lim.max_batch)}},
        "video encoder + Q-Former connector, input normalization inside",
    )


def _llm(cfg: TPOConfig, lim: ExportLimits) -> ComponentIO:
    c = cfg.llm
    kvh, hd, ctx = c.num_kv_heads, c.head_dim, c.max_context
    vocab = c.vocab_size + len(TASK_TOKENS)
    past, present = kv_names(c.num_layers)
    inputs = [IOSpec("inputs_embeds", FLOAT, ("batch", "seq", c.hidden_size), "token/visual/task embeddings"),
              IOSpec("position_ids", "int64", ("batch", "seq"), "absolute positions of the new tokens"),
              IOSpec("attention_mask", "int64", ("batch", "total"), "1 = attend, 0 = padding; total = past + seq")]
    inputs += [IOSpec(n, FLOAT, ("batch", kvh, "past", hd), "cached keys/values (RoPE applied to keys)")
               for n in past]
    outputs = [IOSpec("logits", "float32", ("batch", vocab), "next-token logits of the LAST position"),
               IOSpec("hidden_states", FLOAT, ("batch", "seq", c.hidden_size), "final-norm hidden states")]
    outputs += [IOSpec(n, FLOAT, ("batch", kvh, "total", hd), "past + new keys/values") for n in present]
    opt = lim.prefill_opt or cfg.num_visual_tokens + PREFILL_TEXT_TOKENS
    profiles = {
        "prefill": {"batch": _rng(1, 1, lim.max_batch), "seq": _rng(1, opt, ctx), "past": _rng(0, 0, ctx - 1),
                    "total": _rng(1, opt, ctx)},
        "decode": {"batch": _rng(1, 1, lim.max_batch), "seq": (1, 1, 1), "past": _rng(0, opt, ctx - 1),
                   "total": _rng(1, opt + 1, ctx)},
    }
    return ComponentIO("llm", tuple(inputs), tuple(outputs), profiles,
                       "Mistral decoder, LoRA merged, real-valued RoPE; one graph for prefill and decode")


def _heads(cfg: TPOConfig, lim: ExportLimits) -> list[ComponentIO]:
    d, dv, tc = cfg.llm.hidden_size, cfg.vision.embed_dim, cfg.temporal
    frames = cfg.vision.num_frames // cfg.vision.tubelet_size
    task = IOSpec("task_embedding", FLOAT, ("batch", d), "LLM hidden state at the task placeholder")
    pointer = cfg.pointer.enabled
    region = ComponentIO("head_region", (task, patch_tokens_spec(cfg)) if pointer else (task,),
                         (IOSpec("box", FLOAT, ("batch", 4), "normalized xyxy (no sigmoid; clamp after x W,H)"),),
                         {"default": {"batch": _rng(1, 1, lim.max_batch)}},
                         "pointer head (attention over the patch tokens)" if pointer else "region MLP")
    temporal = ComponentIO(
        "head_temporal",
        (task, IOSpec("frame_features", FLOAT, ("batch", "clips", dv), "vision graph's frame_features"),
         IOSpec("frame_times", "float32", ("batch", "clips"), "frame time / video duration, in [0, 1]"),
         IOSpec("frame_mask", "bool", ("batch", "clips"), "True = valid frame")),
        (IOSpec("pred_logits", FLOAT, ("batch", tc.num_queries, 2), "class logits, 0 = foreground"),
         IOSpec("pred_spans", FLOAT, ("batch", tc.num_queries, 2), "(center, width) / duration, sigmoid"),
         IOSpec("saliency", FLOAT, ("batch", "clips"), f"per-frame saliency; invalid frames {SALIENCY_FILL:g}")),
        {"default": {"batch": _rng(1, 1, lim.max_batch), "clips": _rng(1, frames, tc.max_clips)}},
        "DETR-style span decoder",
    )
    loc = ComponentIO("loc_encoder", (IOSpec("boxes", "float32", ("boxes", 4), "normalized xyxy"),),
                      (IOSpec("embeddings", FLOAT, ("boxes", d), "input embeddings for <track_box> slots"),),
                      {"default": {"boxes": _rng(1, 1, lim.max_track_boxes)}}, "<track_box> input encoder",
                      optional=True)
    return [region, temporal, loc]


def _mask(cfg: TPOConfig, lim: ExportLimits) -> list[ComponentIO]:
    m, d = cfg.mask, cfg.llm.hidden_size
    s, c, cm, mm, p = m.image_size, m.hidden_dim, m.mem_dim, m.num_maskmem, MAX_OBJECT_POINTERS
    hw, lo = (s // 16) ** 2, s // 4
    obj = {"objects": _rng(1, 1, lim.max_objects)}
    emb = IOSpec("embedding", FLOAT, ("objects", hw, c), "stride-16 image embedding, (S/16)^2 tokens")
    emb_pos = IOSpec("embedding_pos", FLOAT, ("objects", hw, c), "its sine position encoding")
    image = ComponentIO(
        "mask_image_encoder",
        (IOSpec("pixels", "float32", ("images", 3, s, s), "RGB resized to S (bilinear, antialias), 0..255"),),
        (IOSpec("feat_s0", FLOAT, ("images", c // 8, lo, lo), "stride-4 features (decoder conv_s0 applied)"),
         IOSpec("feat_s1", FLOAT, ("images", c // 4, s // 8, s // 8), "stride-8 features (conv_s1 applied)"),
         IOSpec("embedding", FLOAT, ("images", hw, c), emb.doc),
         IOSpec("embedding_pos", FLOAT, ("images", hw, c), emb_pos.doc)),
        {"default": {"images": _rng(1, 1, lim.max_images)}}, "SAM2 Hiera image encoder + FPN, normalization inside")
    prompt_in = (IOSpec("task_embedding", FLOAT, ("objects", d), "LLM hidden state at <tracking>"),)
    if cfg.pointer.enabled:
        prompt_in += (patch_tokens_spec(cfg, "objects"),)
    box_out, box_in = (), ()
    if m.box_mask_prompt:  # the decoder also takes the prompt box as SAM2's mask prompt of it
        box_out = (IOSpec("prompt_box", FLOAT, ("objects", 4), "the pointer head's box, normalized xyxy"),)
        box_in = (IOSpec("prompt_box", FLOAT, ("objects", 4),
                         "mask_prompt's prompt_box on the prompted frame (its mask prompt), zeros (an empty box: "
                         "no mask prompt) on tracking frames"),)
    prompt = ComponentIO(
        "mask_prompt", prompt_in,
        (IOSpec("sparse_prompt", FLOAT, ("objects", 3, c), "SAM2 sparse prompt (replaces a box prompt)"), *box_out),
        {"default": obj}, "SAM2 box prompt of the pointer head's box" if cfg.pointer.enabled else "TPO prompt MLP",
        optional=True)
    decoder = ComponentIO(
        "mask_decoder",
        (IOSpec("feat_s0", FLOAT, ("objects", c // 8, lo, lo)),
         IOSpec("feat_s1", FLOAT, ("objects", c // 4, s // 8, s // 8)),
         IOSpec("conditioned", FLOAT, ("objects", hw, c), "memory_attention output"),
         IOSpec("sparse_prompt", FLOAT, ("objects", "prompt_tokens", c),
                "mask_prompt output on the prompted frame, the no_prompt tensor [2, C] on tracking frames"), *box_in),
        (IOSpec("low_res_logits", FLOAT, ("objects", 1, lo, lo), "selected mask logits; -1024 if absent"),
         IOSpec("iou", FLOAT, ("objects", 1), "predicted IoU of the selected mask"),
         IOSpec("object_score_logits", FLOAT, ("objects", 1), "> 0: object present"),
         IOSpec("object_pointer", FLOAT, ("objects", c), "pointer token for the memory bank")),
        {"default": {**obj, "prompt_tokens": _rng(1, 2, lim.max_prompt_tokens)}},
        "SAM2 mask decoder, best-of-3 selection and absent-object gating inside")
    memory_attention = ComponentIO(
        "mask_memory_attention",
        (emb, emb_pos,
         IOSpec("memory", FLOAT, ("objects", mm, hw, cm), "ring buffer; slot 0 = prompted frame"),
         IOSpec("memory_pos", FLOAT, ("objects", mm, hw, cm), "memory_encoder's memory_pos per slot"),
         IOSpec("memory_offsets", "int64", ("objects", mm), "frames before the current one; 0 = prompted frame"),
         IOSpec("memory_valid", "bool", ("objects", mm), "False = empty slot"),
         IOSpec("pointers", FLOAT, ("objects", p, c), "object pointers; slot 0 = prompted frame"),
         IOSpec("pointer_offsets", "int64", ("objects", p), "frames before the current one"),
         IOSpec("pointer_valid", "bool", ("objects", p), "False = empty slot")),
        (IOSpec("conditioned", FLOAT, ("objects", hw, c), "memory-conditioned embedding (no valid slot: "
                                                               "embedding + no_memory_embedding)"),),
        {"default": obj}, "SAM2 memory attention over a fixed-capacity memory with validity masks")
    memory_encoder = ComponentIO(
        "mask_memory_encoder",
        (emb, IOSpec("low_res_logits", FLOAT, ("objects", 1, lo, lo), "mask_decoder output"),
         IOSpec("object_score_logits", FLOAT, ("objects", 1), "mask_decoder output")),
        (IOSpec("memory", FLOAT, ("objects", hw, cm), "write into the ring buffer slot"),
         IOSpec("memory_pos", FLOAT, ("objects", hw, cm), "its position encoding")),
        {"default": obj}, "SAM2 memory encoder (mask downsampler + fuser)")
    return [image, prompt, decoder, memory_attention, memory_encoder]


def component_io(config: TPOConfig, limits: ExportLimits | None = None) -> dict[str, ComponentIO]:
    """Every exportable component's IO for ``config``, in export order."""
    lim = limits or ExportLimits()
    comps = [_vision(config, lim), _llm(config, lim), *_heads(config, lim), *_mask(config, lim)]
    return {c.name: c for c in comps}


@dataclass(frozen=True)
class TensorFileSpec:
    """A tensor the runtime gathers from, written beside the graphs (``.npy``)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    doc: str = ""
    meta: dict = field(default_factory=dict)


def tensor_files(config: TPOConfig) -> list[TensorFileSpec]:
    """Tensors exported as ``.npy`` files (float ones in the export precision)."""
    d = config.llm.hidden_size
    vocab = config.llm.vocab_size + len(TASK_TOKENS)
    return [
        TensorFileSpec("embed_tokens", FLOAT, (vocab, d), "LLM input-embedding table; gather rows by token id"),
        TensorFileSpec("box_token", FLOAT, (d,), "input embedding forced at <boxes>"),
        TensorFileSpec("temporal_token", FLOAT, (d,), "input embedding forced at <temp>"),
        TensorFileSpec("track_token", FLOAT, (d,), "input embedding forced at <tracking>"),
        TensorFileSpec("mask_no_prompt", FLOAT, (2, config.mask.hidden_dim),
                       "sparse prompt of tracking frames (2 not-a-point tokens); add a batch dim"),
    ]


# ------------------------------------------------------------------------------------------ manifest sections
def _task_tokens(ids: dict[str, int]) -> dict[str, TaskToken]:
    out = {}
    for token in TASK_TOKENS:
        ph, head = BEGIN_TO_TASK.get(token, (None, None))
        role = "begin" if ph else "placeholder" if token in PLACEHOLDER_EMBEDDING else "input"
        out[token] = TaskToken(id=ids[token], role=role, head=head, placeholder=ph,
                               placeholder_id=ids[ph] if ph else None, embedding=PLACEHOLDER_EMBEDDING.get(token),
                               embedding_graph=INPUT_TOKENS.get(token))
    return out


def tokenizer_section(tokenizer, file: str, sha256: str) -> TokenizerSpec:
    ids = {name: tokenizer.token_to_id(t) for name, t in (("bos", "<s>"), ("eos", "</s>"), ("pad", "<pad>"),
                                                          ("unk", "<unk>"))}
    for key in ("bos", "eos"):
        if ids[key] is None:
            raise ValueError(f"the tokenizer has no {key} token; a TPO tokenizer needs <s> and </s>")
    pad = ids["pad"] if ids["pad"] is not None else ids["unk"] if ids["unk"] is not None else 0
    return TokenizerSpec(file=file, sha256=sha256, kind="huggingface-tokenizers", bos_id=ids["bos"],
                         eos_id=ids["eos"], pad_id=pad, unk_id=ids["unk"], bos_per_chunk=True)


def manifest_sections(config: TPOConfig, tokenizer: TokenizerSpec, task_ids: dict[str, int], kv_dtype: str,
                      kv_graph: str = "past-present", untrained_heads: tuple[str, ...] = ()) -> dict:
    """The manifest's non-graph sections for ``config`` (typed; see ``runtime/manifest.py``)."""
    v, llm, m, t = config.vision, config.llm, config.mask, config.temporal
    past, present = kv_names(llm.num_layers)
    return {
        "tokenizer": tokenizer,
        "task_tokens": _task_tokens(task_ids),
        "prompt": release_template(config.system_message, config.num_visual_tokens),
        "preprocess": PreprocessSpec(num_frames=v.num_frames, sampling="middle-of-segment", size=v.img_size,
                                     resize=v.resize, align_corners=False, antialias=False, clamp=(0.0, 255.0),
                                     mean=tuple(v.mean), std=tuple(v.std)),
        "kv": KVSpec(graph=kv_graph, layers=llm.num_layers, kv_heads=llm.num_kv_heads, head_dim=llm.head_dim,
                     max_context=llm.max_context, dtype=kv_dtype, past_names=tuple(past), present_names=tuple(present),
                     rope_theta=float(llm.rope_theta), hidden_size=llm.hidden_size,
                     vocab_size=llm.vocab_size + len(TASK_TOKENS)),
        "mask": MaskSpec(image_size=m.image_size, low_res=m.low_res_size, embed_size=m.image_size // 16,
                         hidden_dim=m.hidden_dim, mem_dim=m.mem_dim, memory_capacity=m.num_maskmem,
                         pointer_capacity=MAX_OBJECT_POINTERS, resize="bilinear", antialias=True, align_corners=False,
                         mean=IMAGENET_MEAN, std=IMAGENET_STD, threshold=0.0, no_object_score=NO_OBJ_SCORE,
                         skip_last_memory=True),
        "heads": HeadsSpec(temporal=TemporalHeadSpec(round_to_s=float(t.round_to_s), foreground_index=0,
                                                     num_queries=t.num_queries, max_clips=t.max_clips,
                                                     saliency_fill=SALIENCY_FILL),
                           mask_threshold=0.0, untrained=tuple(untrained_heads)),
        "generation": GenerationSpec(max_new_tokens=config.max_new_tokens, eos_id=tokenizer.eos_id,
                                     stop_ids=(tokenizer.eos_id,)),
    }
