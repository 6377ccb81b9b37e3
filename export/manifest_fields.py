"""The non-graph fields of ``manifest.json``, derived from the model config, tokenizer and ``tpo_core.tokens``.

Everything the runtime needs to reproduce ``TPOModel.generate`` without importing ``tpo_core``:

- ``tokenizer``: files, bos/eos/pad ids, ``bos_per_chunk`` (each prompt chunk starts with BOS).
- ``task_tokens``: token -> id, role (``begin`` / ``placeholder`` / ``input``), the head a ``*_begin`` token
  triggers and the placeholder it forces, the tensor (or graph) giving a placeholder's input embedding.
- ``prompt``: the chunk templates around the visual tokens (``tokens.prompt_chunks`` with ``{question}``),
  the time sentence inserted before the question when it contains one of ``time_words``.
- ``preprocess`` (vision frames), ``mask`` (mask head image + memory bank), ``heads`` (post-processing),
  ``kv`` (cache layout), ``generation`` (max_new_tokens, eos, routing rule).
"""

from __future__ import annotations

from runtime.manifest import ComponentSpec, Manifest
from tpo_core import __version__
from tpo_core.export_specs import MAX_OBJECT_POINTERS, kv_names
from tpo_core.tokens import (
    BEGIN_TO_TASK,
    PLACEHOLDER_EMBEDDING,
    TASK_TOKENS,
    format_timestamps,
    mentions_time,
    prompt_chunks,
)

QUESTION = "{question}"


def time_words() -> list[str]:
    """The words that make ``tokens.mentions_time`` true (read from the function, then checked against it)."""
    consts = [c for c in mentions_time.__code__.co_consts if isinstance(c, tuple) and c and
              all(isinstance(w, str) for w in c)]
    if len(consts) != 1:
        raise RuntimeError("cannot read the time words of tpo_core.tokens.mentions_time; export them as a constant")
    words = list(consts[0])
    bad = [w for w in words if not mentions_time(w)] + ([""] if mentions_time("") else [])
    if bad:
        raise RuntimeError(f"time words {bad} disagree with tokens.mentions_time")
    return words


def prompt_template(system_message: str, num_visual: int) -> dict:
    """Prompt chunks with a ``{question}`` slot; ``render_prompt`` reproduces ``tokens.prompt_chunks``."""
    chunks = prompt_chunks(QUESTION, system_message)
    sentence = format_timestamps([1.5, 2.5])
    prefix, rest = sentence.split("1.5", 1)
    joiner, suffix = rest.split("2.5", 1)
    return {
        "chunks": chunks, "visual_after_chunk": 0, "visual_tokens": num_visual, "question_slot": QUESTION,
        "question_strip": True, "system_message": system_message, "time_words": time_words(),
        "time_match": "case-insensitive substring", "time_sentence": {"prefix": prefix, "item_format": "{:.1f}",
                                                                       "joiner": joiner, "suffix": suffix},
        "time_position": "sentence + ' ' + question", "bos_per_chunk": True,
    }


def render_prompt(prompt: dict, question: str, times_s=None) -> list[str]:
    """The runtime's rendering of ``prompt`` (here to test it against ``tokens.prompt_chunks``)."""
    msg = question.strip() if prompt["question_strip"] else question
    if times_s is not None and any(w in msg.lower() for w in prompt["time_words"]):
        ts = prompt["time_sentence"]
        msg = ts["prefix"] + ts["joiner"].join(ts["item_format"].format(t) for t in times_s) + ts["suffix"] + " " + msg
    return [c.replace(prompt["question_slot"], msg) for c in prompt["chunks"]]


def _tokenizer(model) -> dict:
    tok = model.tokenizer
    ids = {name: tok.token_to_id(t) for name, t in (("bos_id", "<s>"), ("eos_id", "</s>"), ("pad_id", "<pad>"),
                                                     ("unk_id", "<unk>"))}
    for key in ("bos_id", "eos_id"):
        if ids[key] is None:
            raise ValueError(f"the tokenizer has no {key[:3]} token; a TPO tokenizer needs <s> and </s>")
    if ids["pad_id"] is None:
        ids["pad_id"] = ids["unk_id"] if ids["unk_id"] is not None else 0
    return {"files": ["tokenizer.json"], **ids, "bos_per_chunk": True, "add_special_tokens": False,
            "kind": "huggingface-tokenizers"}


def _task_tokens(model) -> dict:
    ids = model.task_ids.by_token()
    out = {}
    for token in TASK_TOKENS:
        entry = {"id": ids[token]}
        if token in BEGIN_TO_TASK:
            placeholder, head = BEGIN_TO_TASK[token]
            entry.update(role="begin", head=head, placeholder=placeholder, placeholder_id=ids[placeholder])
        elif token in PLACEHOLDER_EMBEDDING:
            entry.update(role="placeholder", embedding=PLACEHOLDER_EMBEDDING[token])
        else:
            entry.update(role="input", embedding_graph="loc_encoder",
                         doc="prompt input: the loc_encoder graph embeds one normalized xyxy box per occurrence")
        out[token] = entry
    return out


def _preprocess(cfg) -> dict:
    v = cfg.vision
    return {"num_frames": v.num_frames, "sampling": "middle-of-segment", "sampling_rule": "int((i + 0.5) * n / T)",
            "size": v.img_size, "resize": v.resize, "align_corners": False, "antialias": False, "clamp": [0, 255],
            "mean": list(v.mean), "std": list(v.std), "layout": "[B, T, 3, S, S] RGB float32 0..255",
            "normalize": "in graph: (clamp(x, 0, 255) / 255 - mean) / std"}


def _mask(cfg) -> dict:
    m = cfg.mask
    return {"image_size": m.image_size, "low_res": m.low_res_size, "embed_size": m.image_size // 16,
            "hidden_dim": m.hidden_dim, "mem_dim": m.mem_dim, "memory_capacity": m.num_maskmem,
            "pointer_capacity": MAX_OBJECT_POINTERS, "resize": "bilinear", "antialias": True, "align_corners": False,
            "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "threshold": 0.0, "no_object_score": -1024.0,
            "ring": "slot 0 = prompted frame; slots 1..M-1 (pointers 1..P-1) a ring of the latest frames, written "
                    "round-robin; offsets = frames before the current one (0 for the prompted frame's memory)",
            "prompted_frame": "memory_attention with every slot invalid, decoder with mask_prompt's sparse prompt",
            "tracking_frames": "decoder with the mask_no_prompt tensor as sparse prompt",
            "skip_last_memory": True}


def _heads(cfg) -> dict:
    return {
        "region": {"output": "normalized xyxy", "postprocess": "x (W, H), order corners, clamp to the image"},
        "temporal": {"round_to_s": cfg.temporal.round_to_s, "foreground_index": 0, "span_format": "center-width",
                     "max_clips": cfg.temporal.max_clips, "num_queries": cfg.temporal.num_queries,
                     "saliency_fill": -1e4, "frame_times": "timestamp / duration",
                     "postprocess": "softmax[...,0]; (cx -+ w/2) * duration; clamp; round; clamp; sort by score"},
        "mask": {"threshold": 0.0, "upsample": "bilinear, align_corners False, to the video resolution"},
    }


def build_manifest(model, source: dict, precision: str, opset: int, components: dict[str, ComponentSpec],
                   tensors: dict[str, dict]) -> Manifest:
    cfg, llm = model.config, model.config.llm
    past, present = kv_names(llm.num_layers)
    eos = model.tokenizer.token_to_id("</s>")
    kv_dtype = components["llm"].inputs[0].dtype if "llm" in components else None
    return Manifest(
        toolkit_version=__version__, source=source, precision=precision, opset=opset, components=components,
        tensors=tensors, tokenizer=_tokenizer(model), task_tokens=_task_tokens(model),
        prompt=prompt_template(cfg.system_message, cfg.num_visual_tokens), preprocess=_preprocess(cfg),
        kv={"layers": llm.num_layers, "kv_heads": llm.num_kv_heads, "head_dim": llm.head_dim,
            "max_context": llm.max_context, "dtype": kv_dtype, "layout": "[batch, kv_heads, seq, head_dim]",
            "past_names": past, "present_names": present, "rope": "keys cached after RoPE",
            "rope_theta": llm.rope_theta, "hidden_size": llm.hidden_size,
            "vocab_size": llm.vocab_size + len(TASK_TOKENS)},
        mask=_mask(cfg), heads=_heads(cfg),
        generation={"max_new_tokens": cfg.max_new_tokens, "eos_id": eos, "stop_ids": [eos], "greedy": True,
                    "routing": "after a *_begin token is fed, feed its placeholder's task embedding; that step's "
                               "hidden state is the head input; both ids count towards max_new_tokens"},
    )
