"""The one table of the VideoChat-TPO -> tpo-edge conversion: every rename, every transform, every extra.

Each ``Rule`` matches official names with a template (``{n}``/``{k}``: an integer, ``{p}``: ``weight`` or
``bias``, ``{rest}``: any suffix) and gives the tpo-edge names it feeds (the same placeholders filled in), the
transform that builds them, and this source's role in it. Rules are tried in order; the first match wins.
A rule without targets is an *extra*: the tensor is kept verbatim in ``extras.safetensors`` with ``reason``.

Transforms (``TRANSFORMS``):
- ``copy``: the tensor as is (one source; several targets get the same values, e.g. SAM2's shared Gaussian
  matrix, used by both the prompt encoder and the image-wide positional embedding).
- ``fuse_qkv_bias``: roles ``q``, ``v`` [D] -> ``cat(q, zeros, v)`` [3D] (UMT has no key bias; a key bias
  would shift every logit of a query equally, so zero is exact).
- ``cat_rows``: roles ``0``..``3`` [1, C] -> ``cat`` [4, C] (SAM2's 4 point embeddings).
- ``merge_lora`` (``--merge-lora`` only): roles ``base`` [O, I], ``A`` [r, I], ``B`` [O, r] ->
  ``base + (alpha / r) * B @ A`` computed in float32 (peft's own merge formula).

The SAM2 names are transformers' SAM2-video names (``Sam2VideoModel``). transformers' own key table
(``convert_sam2_video_to_hf.py``) is not part of its wheels (4.57 nor 5.x), so it cannot be imported; the
SAM2 rules below state the same correspondences rule by rule, and the strict load into ``Sam2VideoModel``
checks every name and shape (``tests/test_convert.py``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

TRANSFORMS = ("copy", "fuse_qkv_bias", "cat_rows", "merge_lora")
_PLACEHOLDERS = {"n": r"\d+", "k": r"\d+", "p": r"weight|bias", "rest": r".+"}


@dataclass(frozen=True)
class Rule:
    source: str
    targets: tuple[str, ...] = ()
    transform: str = "copy"
    role: str = ""
    group: str = ""
    reason: str = ""

    def __post_init__(self) -> None:
        assert self.transform in TRANSFORMS, f"rule {self.source}: unknown transform {self.transform}"
        assert self.targets or self.reason, f"rule {self.source}: an extra needs a reason"

    @property
    def regex(self) -> re.Pattern:
        return _compile(self.source)

    def apply(self, name: str) -> tuple[str, ...] | None:
        """The target names for ``name`` (``()`` for an extra), or None when the rule does not match."""
        m = self.regex.fullmatch(name)
        if m is None:
            return None
        return tuple(t.format(**m.groupdict()) for t in self.targets)


_CACHE: dict[str, re.Pattern] = {}


def _compile(template: str) -> re.Pattern:
    if template not in _CACHE:
        parts = re.split(r"(\{\w+\})", template)
        rx = "".join(f"(?P<{p[1:-1]}>{_PLACEHOLDERS[p[1:-1]]})" if p.startswith("{") else re.escape(p)
                     for p in parts)
        _CACHE[template] = re.compile(rx)
    return _CACHE[template]


def _r(source: str, *targets: str, transform: str = "copy", role: str = "", group: str = "") -> Rule:
    return Rule(source, tuple(targets), transform, role, group)


def _extra(source: str, reason: str, group: str) -> Rule:
    return Rule(source, (), "copy", "", group, reason)


QFORMER_TEXT = ("the Q-Former's text branch (word/position embeddings and the text FFN of every layer); the "
                "query-only path used at inference never reads it")
CGDETR = ("CG-DETR, the release's temporal decoder: its inputs come from InternVideo2-CLIP-1B clip features "
          "(770-d) and a 4096-d LLaMA text tower, two models (~8 B parameters) not in this checkpoint; "
          "tpo-edge's temporal head replaces it and must be trained (`tpo train --stage 2 --heads temporal`)")


def _vision_rules() -> list[Rule]:
    g = "vision encoder (UMT ViT-L)"
    v = "vision_encoder.encoder"
    return [
        _r(f"{v}.patch_embed.proj.{{p}}", "vision.patch_embed.proj.{p}", group=g),
        _r(f"{v}.blocks.{{n}}.attn.q_bias", "vision.blocks.{n}.attn.qkv.bias", transform="fuse_qkv_bias", role="q",
           group=g),
        _r(f"{v}.blocks.{{n}}.attn.v_bias", "vision.blocks.{n}.attn.qkv.bias", transform="fuse_qkv_bias", role="v",
           group=g),
        _r(f"{v}.blocks.{{n}}.{{rest}}", "vision.blocks.{n}.{rest}", group=g),
    ]


def _connector_rules() -> list[Rule]:
    g = "connector (Q-Former)"
    q = "qformer.bert"
    c = "connector.qformer"
    return [
        _extra(f"{q}.embeddings.word_embeddings.weight", QFORMER_TEXT, g),
        _extra(f"{q}.embeddings.position_embeddings.weight", QFORMER_TEXT, g),
        _extra(f"{q}.embeddings.position_ids", QFORMER_TEXT, g),
        _extra(f"{q}.encoder.layer.{{n}}.intermediate.dense.{{p}}", QFORMER_TEXT, g),
        _extra(f"{q}.encoder.layer.{{n}}.output.{{rest}}", QFORMER_TEXT, g),
        _r(f"{q}.embeddings.LayerNorm.{{p}}", f"{c}.layernorm.{{p}}", group=g),
        _r(f"{q}.encoder.layer.{{n}}.attention.self.{{rest}}", f"{c}.encoder.layer.{{n}}.attention.attention.{{rest}}",
           group=g),
        _r(f"{q}.encoder.layer.{{n}}.crossattention.self.{{rest}}",
           f"{c}.encoder.layer.{{n}}.crossattention.attention.{{rest}}", group=g),
        _r(f"{q}.encoder.layer.{{n}}.{{rest}}", f"{c}.encoder.layer.{{n}}.{{rest}}", group=g),
        _r("vision_layernorm.{p}", "connector.vision_layernorm.{p}", group=g),
        _r("query_tokens", "connector.query_tokens", group=g),
        _r("extra_query_tokens", "connector.extra_query_tokens", group=g),
        _r("project_up.{p}", "connector.proj.{p}", group=g),
        _extra("project_down.{p}", "LLM -> Q-Former projection of the release's training-only paths; unused at "
               "inference", g),
        _extra("merge_proj.{p}", "token-merging projection (4 Q-Former tokens -> 1) of the release's multi-clip "
               "path; its video path at 16 frames uses project_up only", g),
    ]


def _llm_rules(merge_lora: bool) -> list[Rule]:
    g = "LLM (Mistral-7B + LoRA)"
    src = "lm.base_model.model"
    if not merge_lora:
        return [_r(f"{src}.{{rest}}", "llm.lm.base_model.model.{rest}", group=g)]
    return [
        _r(f"{src}.{{rest}}.base_layer.weight", "llm.lm.{rest}.weight", transform="merge_lora", role="base", group=g),
        _r(f"{src}.{{rest}}.lora_A.default.weight", "llm.lm.{rest}.weight", transform="merge_lora", role="A",
           group=g),
        _r(f"{src}.{{rest}}.lora_B.default.weight", "llm.lm.{rest}.weight", transform="merge_lora", role="B",
           group=g),
        _r(f"{src}.{{rest}}", "llm.lm.{rest}", group=g),
    ]


def _head_rules() -> list[Rule]:
    g = "task tokens and heads"
    temporal = ("the release's second temporal decoder (MLPs 4096 -> 4096 -> 2 / 1 on the task embedding); its "
                "demo decodes time with CG-DETR instead, and tpo-edge's temporal head has another layout")
    return [
        _r("box_token", "llm.box_token", group=g),
        _r("temporal_token", "llm.temporal_token", group=g),
        _r("track_token", "llm.track_token", group=g),
        _r("loc_encoder.{n}.{p}", "llm.loc_encoder.{n}.{p}", group=g),
        _r("loc_decoder.{n}.{p}", "region_head.mlp.{n}.{p}", group=g),
        _r("track_embed.layers.{n}.{p}", "mask_head.prompt_mlp.layers.{n}.{p}", group=g),
        _r("track_embed_decode2.layers.{n}.{p}", "mask_head.box_mlp.layers.{n}.{p}", group=g),
        _extra("temporal_embed.layers.{n}.{p}", temporal, g),
        _extra("action_embed.layers.{n}.{p}", temporal, g),
        _extra("cg_model.{rest}", CGDETR, "temporal (CG-DETR)"),
        _extra("cg_criterion.empty_weight", "a loss buffer of CG-DETR's training criterion (class weights)",
               "temporal (CG-DETR)"),
    ]


def _mlp3(src: str, dst: str, g: str) -> list[Rule]:
    """SAM2's 3-layer MLP ``layers.0/1/2`` -> transformers' ``proj_in`` / ``layers.0`` / ``proj_out``."""
    return [_r(f"{src}.layers.0.{{p}}", f"{dst}.proj_in.{{p}}", group=g),
            _r(f"{src}.layers.1.{{p}}", f"{dst}.layers.0.{{p}}", group=g),
            _r(f"{src}.layers.2.{{p}}", f"{dst}.proj_out.{{p}}", group=g)]


def _attention(src: str, dst: str, g: str) -> list[Rule]:
    return [_r(f"{src}.{proj}.{{p}}", f"{dst}.{proj}.{{p}}", group=g) for proj in ("q_proj", "k_proj", "v_proj")] + [
        _r(f"{src}.out_proj.{{p}}", f"{dst}.o_proj.{{p}}", group=g)]


def _sam_encoder_rules() -> list[Rule]:
    g = "SAM2 image encoder (Hiera)"
    s, t = "sam.image_encoder", "mask_head.sam.vision_encoder"
    return [
        _r(f"{s}.trunk.patch_embed.proj.{{p}}", f"{t}.backbone.patch_embed.projection.{{p}}", group=g),
        _r(f"{s}.trunk.pos_embed", f"{t}.backbone.pos_embed", group=g),
        _r(f"{s}.trunk.pos_embed_window", f"{t}.backbone.pos_embed_window", group=g),
        _r(f"{s}.trunk.blocks.{{n}}.norm1.{{p}}", f"{t}.backbone.blocks.{{n}}.layer_norm1.{{p}}", group=g),
        _r(f"{s}.trunk.blocks.{{n}}.norm2.{{p}}", f"{t}.backbone.blocks.{{n}}.layer_norm2.{{p}}", group=g),
        _r(f"{s}.trunk.blocks.{{n}}.attn.{{rest}}", f"{t}.backbone.blocks.{{n}}.attn.{{rest}}", group=g),
        _r(f"{s}.trunk.blocks.{{n}}.mlp.layers.0.{{p}}", f"{t}.backbone.blocks.{{n}}.mlp.proj_in.{{p}}", group=g),
        _r(f"{s}.trunk.blocks.{{n}}.mlp.layers.1.{{p}}", f"{t}.backbone.blocks.{{n}}.mlp.proj_out.{{p}}", group=g),
        _r(f"{s}.trunk.blocks.{{n}}.proj.{{p}}", f"{t}.backbone.blocks.{{n}}.proj.{{p}}", group=g),
        _r(f"{s}.neck.convs.{{n}}.conv.{{p}}", f"{t}.neck.convs.{{n}}.{{p}}", group=g),
    ]


def _sam_prompt_rules() -> list[Rule]:
    g = "SAM2 prompt encoder"
    s, t = "sam.sam_prompt_encoder", "mask_head.sam.prompt_encoder"
    rules = [
        _r(f"{s}.pe_layer.positional_encoding_gaussian_matrix", f"{t}.shared_embedding.positional_embedding",
           "mask_head.sam.shared_image_embedding.positional_embedding", group=g),
        _r(f"{s}.not_a_point_embed.weight", f"{t}.not_a_point_embed.weight", group=g),
        _r(f"{s}.no_mask_embed.weight", f"{t}.no_mask_embed.weight", group=g),
    ]
    rules += [_r(f"{s}.point_embeddings.{i}.weight", f"{t}.point_embed.weight", transform="cat_rows", role=str(i),
                 group=g) for i in range(4)]
    for idx, name in (("0", "conv1"), ("1", "layer_norm1"), ("3", "conv2"), ("4", "layer_norm2"), ("6", "conv3")):
        rules.append(_r(f"{s}.mask_downscaling.{idx}.{{p}}", f"{t}.mask_embed.{name}.{{p}}", group=g))
    return rules


def _sam_decoder_rules() -> list[Rule]:
    g = "SAM2 mask decoder"
    s, t = "sam.sam_mask_decoder", "mask_head.sam.mask_decoder"
    rules = []
    for attn in ("self_attn", "cross_attn_token_to_image", "cross_attn_image_to_token"):
        rules += _attention(f"{s}.transformer.layers.{{n}}.{attn}", f"{t}.transformer.layers.{{n}}.{attn}", g)
    rules += _attention(f"{s}.transformer.final_attn_token_to_image", f"{t}.transformer.final_attn_token_to_image", g)
    rules += [_r(f"{s}.transformer.layers.{{n}}.norm{k}.{{p}}", f"{t}.transformer.layers.{{n}}.layer_norm{k}.{{p}}",
                 group=g) for k in (1, 2, 3, 4)]
    rules += [
        _r(f"{s}.transformer.layers.{{n}}.mlp.layers.0.{{p}}", f"{t}.transformer.layers.{{n}}.mlp.proj_in.{{p}}",
           group=g),
        _r(f"{s}.transformer.layers.{{n}}.mlp.layers.1.{{p}}", f"{t}.transformer.layers.{{n}}.mlp.proj_out.{{p}}",
           group=g),
        _r(f"{s}.transformer.norm_final_attn.{{p}}", f"{t}.transformer.layer_norm_final_attn.{{p}}", group=g),
        _r(f"{s}.output_upscaling.0.{{p}}", f"{t}.upscale_conv1.{{p}}", group=g),
        _r(f"{s}.output_upscaling.1.{{p}}", f"{t}.upscale_layer_norm.{{p}}", group=g),
        _r(f"{s}.output_upscaling.3.{{p}}", f"{t}.upscale_conv2.{{p}}", group=g),
    ]
    rules += [_r(f"{s}.{name}.weight", f"{t}.{name}.weight", group=g)
              for name in ("iou_token", "mask_tokens", "obj_score_token")]
    rules += [_r(f"{s}.{name}.{{p}}", f"{t}.{name}.{{p}}", group=g) for name in ("conv_s0", "conv_s1")]
    rules += _mlp3(f"{s}.output_hypernetworks_mlps.{{n}}", f"{t}.output_hypernetworks_mlps.{{n}}", g)
    rules += _mlp3(f"{s}.iou_prediction_head", f"{t}.iou_prediction_head", g)
    rules += _mlp3(f"{s}.pred_obj_score_head", f"{t}.pred_obj_score_head", g)
    return rules


def _sam_memory_rules() -> list[Rule]:
    g = "SAM2 memory attention / encoder"
    s, t = "sam", "mask_head.sam"
    rules = []
    for attn in ("self_attn", "cross_attn_image"):
        rules += _attention(f"{s}.memory_attention.layers.{{n}}.{attn}", f"{t}.memory_attention.layers.{{n}}.{attn}", g)
    rules += [_r(f"{s}.memory_attention.layers.{{n}}.norm{k}.{{p}}",
                 f"{t}.memory_attention.layers.{{n}}.layer_norm{k}.{{p}}", group=g) for k in (1, 2, 3)]
    rules += [_r(f"{s}.memory_attention.layers.{{n}}.{lin}.{{p}}", f"{t}.memory_attention.layers.{{n}}.{lin}.{{p}}",
                 group=g) for lin in ("linear1", "linear2")]
    rules.append(_r(f"{s}.memory_attention.norm.{{p}}", f"{t}.memory_attention.layer_norm.{{p}}", group=g))
    me, tm = f"{s}.memory_encoder", f"{t}.memory_encoder"
    for k in range(4):  # Conv (3k), LayerNorm2d (3k + 1), GELU (3k + 2)
        rules.append(_r(f"{me}.mask_downsampler.encoder.{3 * k}.{{p}}",
                        f"{tm}.mask_downsampler.layers.{k}.conv.{{p}}", group=g))
        rules.append(_r(f"{me}.mask_downsampler.encoder.{3 * k + 1}.{{p}}",
                        f"{tm}.mask_downsampler.layers.{k}.layer_norm.{{p}}", group=g))
    rules += [
        _r(f"{me}.mask_downsampler.encoder.12.{{p}}", f"{tm}.mask_downsampler.final_conv.{{p}}", group=g),
        _r(f"{me}.pix_feat_proj.{{p}}", f"{tm}.feature_projection.{{p}}", group=g),
        _r(f"{me}.fuser.layers.{{n}}.dwconv.{{p}}", f"{tm}.memory_fuser.layers.{{n}}.depthwise_conv.{{p}}", group=g),
        _r(f"{me}.fuser.layers.{{n}}.norm.{{p}}", f"{tm}.memory_fuser.layers.{{n}}.layer_norm.{{p}}", group=g),
        _r(f"{me}.fuser.layers.{{n}}.pwconv1.{{p}}", f"{tm}.memory_fuser.layers.{{n}}.pointwise_conv1.{{p}}", group=g),
        _r(f"{me}.fuser.layers.{{n}}.pwconv2.{{p}}", f"{tm}.memory_fuser.layers.{{n}}.pointwise_conv2.{{p}}", group=g),
        _r(f"{me}.fuser.layers.{{n}}.gamma", f"{tm}.memory_fuser.layers.{{n}}.scale", group=g),
        _r(f"{me}.out_proj.{{p}}", f"{tm}.projection.{{p}}", group=g),
        _r(f"{s}.maskmem_tpos_enc", f"{t}.memory_temporal_positional_encoding", group=g),
        _r(f"{s}.no_mem_embed", f"{t}.no_memory_embedding", group=g),
        _r(f"{s}.no_mem_pos_enc", f"{t}.no_memory_positional_encoding", group=g),
        _r(f"{s}.no_obj_ptr", f"{t}.no_object_pointer", group=g),
        _r(f"{s}.mask_downsample.{{p}}", f"{t}.mask_downsample.{{p}}", group=g),
    ]
    rules += _mlp3(f"{s}.obj_ptr_proj", f"{t}.object_pointer_proj", g)
    return rules


def conversion_table(merge_lora: bool = False) -> list[Rule]:
    """All rules, in matching order (the LLM rules depend on ``merge_lora``)."""
    return (_vision_rules() + _connector_rules() + _llm_rules(merge_lora) + _head_rules() + _sam_encoder_rules()
            + _sam_prompt_rules() + _sam_decoder_rules() + _sam_memory_rules())


@dataclass
class Target:
    """One tpo-edge tensor: how it is built and from which official tensors (role -> official name)."""

    name: str
    transform: str
    sources: dict[str, str] = field(default_factory=dict)


@dataclass
class Plan:
    """What the conversion of a set of official names does, before any tensor is read."""

    targets: dict[str, Target]
    extras: dict[str, str]  # official name -> reason
    unmapped: list[str]  # official names no rule matched, or sources of an incomplete multi-source target
    source_targets: dict[str, tuple[str, ...]]  # official name -> the target names it feeds

    @property
    def mapped(self) -> int:
        return len(self.source_targets)


_ROLES = {"copy": {""}, "fuse_qkv_bias": {"q", "v"}, "cat_rows": {"0", "1", "2", "3"},
          "merge_lora": {"base", "A", "B"}}


def build_plan(names, merge_lora: bool = False) -> Plan:
    """Match every official name against the table; nothing is dropped silently."""
    rules = conversion_table(merge_lora)
    targets: dict[str, Target] = {}
    extras: dict[str, str] = {}
    unmapped: list[str] = []
    source_targets: dict[str, tuple[str, ...]] = {}
    for name in names:
        rule, outs = next(((r, o) for r in rules if (o := r.apply(name)) is not None), (None, None))
        if rule is None:
            unmapped.append(name)
            continue
        if not outs:
            extras[name] = rule.reason
            continue
        for out in outs:
            tgt = targets.setdefault(out, Target(out, rule.transform))
            if tgt.transform != rule.transform or rule.role in tgt.sources:
                raise AssertionError(f"conversion table: {name} and {sorted(tgt.sources.values())} both build {out}")
            tgt.sources[rule.role] = name
        source_targets[name] = outs
    for tgt in list(targets.values()):
        if set(tgt.sources) != _ROLES[tgt.transform]:  # e.g. a q_bias without its v_bias
            for src in tgt.sources.values():
                unmapped.append(src)
                source_targets.pop(src, None)
            del targets[tgt.name]
    return Plan(targets, extras, sorted(set(unmapped)), source_targets)
