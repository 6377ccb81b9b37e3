"""Reference inference: KV-cached greedy / top-p decoding with task-token routing to the heads.

Routing (the contract the exported runtime reproduces): when the LLM emits a ``*_begin`` token ``b``,
``b`` is fed back as usual, then the matching placeholder is *forced*: the next input is the learnable
task embedding (``box_token`` / ``temporal_token`` / ``track_token``), exactly the pair layout of the
training sequences (``<box_begin><boxes>`` ...). The final-layer hidden state of that step [D] is the
task embedding that the head decodes; decoding then continues from that step's logits. Both ids count
towards ``max_new_tokens`` and appear in ``TPOResult.token_ids``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from transformers import DynamicCache

from .checkpoint import refuse_untrained
from .results import MaskResult, RegionResult, Span, TemporalResult, TPOResult, mask_box


def _sample(logits: torch.Tensor, do_sample: bool, top_p: float, temperature: float,
            generator: torch.Generator | None) -> int:
    """logits [V] -> next id: argmax (greedy) or nucleus sampling."""
    if not do_sample:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / max(temperature, 1e-5), dim=-1)
    sorted_p, order = torch.sort(probs, descending=True)
    keep = torch.cumsum(sorted_p, 0) - sorted_p < top_p
    keep[0] = True
    sorted_p = torch.where(keep, sorted_p, torch.zeros_like(sorted_p))
    choice = torch.multinomial(sorted_p / sorted_p.sum(), 1, generator=generator)
    return int(order[choice])


def _load_clip(model, video):
    from .data.video import VideoClip, read_video

    if isinstance(video, VideoClip):
        return video
    if isinstance(video, (str, Path)):
        return read_video(video, model.config.vision.num_frames)
    raise ValueError(f"video must be a path or a VideoClip, got {type(video).__name__}")


def generate(model, video, prompt: str, *, max_new_tokens: int | None = None, do_sample: bool = False,
             top_p: float = 0.9, temperature: float = 1.0, seed: int = 0, track_boxes=None,
             mask_frames: np.ndarray | None = None, mask_timestamps: np.ndarray | None = None,
             logits_processor=None) -> TPOResult:
    """Answer ``prompt`` about ``video`` (a path or a ``VideoClip``).

    track_boxes: normalized xyxy boxes [K, 4] for ``<track_box>`` tokens in the prompt.
    mask_frames: uint8 [Tm, H, W, 3] frames the mask head segments (default: the clip's sampled frames),
    with their ``mask_timestamps`` [Tm] in seconds.
    logits_processor: optional ``f(step, logits [V]) -> logits`` applied before choosing each token
    (constrained decoding, e.g. to force a task).
    Returns a ``TPOResult``: text, ids, and boxes in pixels / spans in seconds / masks at video resolution.
    """
    from .data.video import preprocess_frames

    cfg, dev, timings = model.config, model.device, {}
    clip = _load_clip(model, video)
    max_new = max_new_tokens or cfg.max_new_tokens
    t0 = time.perf_counter()
    pixels = preprocess_frames(clip.frames, cfg.vision.img_size, cfg.vision.mean, cfg.vision.std,
                               mode=cfg.vision.resize).to(dev, model.dtype)
    visual, frame_feats = model.encode_video(pixels[None])
    timings["vision_ms"] = (time.perf_counter() - t0) * 1e3

    ids = model.prompts.build(prompt, clip.timestamps)
    boxes = None if track_boxes is None else torch.as_tensor(np.asarray(track_boxes), dtype=model.dtype, device=dev)
    embeds = model.sequence_embeds(ids, visual, boxes)
    if embeds.shape[1] + max_new > cfg.llm.max_context:
        raise ValueError(f"prompt of {embeds.shape[1]} tokens + max_new_tokens={max_new} exceeds the KV capacity "
                         f"max_context={cfg.llm.max_context}; shorten the question or lower max_new_tokens")

    t0 = time.perf_counter()
    cache = DynamicCache()
    logits, hidden, cache = model.llm(embeds, past_key_values=cache, use_cache=True)
    timings["prefill_ms"] = (time.perf_counter() - t0) * 1e3
    generator = torch.Generator().manual_seed(seed) if do_sample else None
    begin = model.task_ids.begin_ids()
    placeholders = model.llm.placeholder_embeddings()
    out_ids, result = [], TPOResult(text="", token_ids=[])
    t0 = time.perf_counter()

    def step(emb):
        nonlocal cache
        lo, hi, cache = model.llm(emb.view(1, 1, -1), past_key_values=cache, use_cache=True)
        return lo, hi

    while len(out_ids) < max_new:
        scores = logits[0, -1].float().cpu()
        if logits_processor is not None:
            scores = logits_processor(len(out_ids), scores)
        tok = _sample(scores, do_sample, top_p, temperature, generator)
        out_ids.append(tok)
        if tok == model.prompts.eos_id:
            break
        logits, hidden = step(model.llm.embed(torch.tensor([[tok]], device=dev)))
        if tok in begin and len(out_ids) < max_new:
            placeholder_id, head = begin[tok]
            refuse_untrained(model, head)  # e.g. the temporal head of a converted VideoChat-TPO checkpoint
            logits, hidden = step(placeholders[placeholder_id])
            out_ids.append(placeholder_id)
            th = time.perf_counter()
            _run_head(model, head, hidden[:, -1], clip, frame_feats, result, mask_frames, mask_timestamps)
            timings[f"head_{head}_ms"] = (time.perf_counter() - th) * 1e3
            result.tasks.append(head)
    head_ms = sum(v for k, v in timings.items() if k.startswith("head_"))
    timings["decode_ms"] = (time.perf_counter() - t0) * 1e3 - head_ms
    result.token_ids = out_ids
    result.text = model.prompts.decode(out_ids)
    result.timings_ms = timings
    return result


def _run_head(model, head: str, h: torch.Tensor, clip, frame_feats, result: TPOResult, mask_frames,
              mask_timestamps) -> None:
    """Run one head on the task embedding h [1, D] and store its post-processed output in ``result``."""
    from .modeling.heads.region import boxes_to_pixels
    from .modeling.heads.temporal import spans_to_seconds

    if head == "region":
        norm = model.run_region(h)
        px = boxes_to_pixels(norm, clip.width, clip.height)[0].tolist()
        result.region = RegionResult(box=tuple(px), box_normalized=tuple(norm[0].tolist()))
    elif head == "temporal":
        times = torch.as_tensor(clip.timestamps, dtype=h.dtype, device=h.device)[None] / max(clip.duration, 1e-6)
        out = model.run_temporal(h, frame_feats, times)
        windows = spans_to_seconds(out.pred_logits, out.pred_spans, clip.duration,
                                   round_to=model.config.temporal.round_to_s)[0]
        result.temporal = TemporalResult(spans=[Span(float(s), float(e), float(p)) for s, e, p in windows],
                                         saliency=out.saliency[0].float().cpu().numpy(),
                                         saliency_times=np.asarray(clip.timestamps, dtype=np.float32))
    elif head == "mask":
        frames = clip.frames if mask_frames is None else mask_frames
        stamps = clip.timestamps if mask_frames is None else mask_timestamps
        pixels = model.mask_head.preprocess(torch.from_numpy(np.ascontiguousarray(frames))).to(h.device, h.dtype)
        track = model.run_mask(h, pixels)
        masks = model.mask_head.masks_at_resolution(track.low_res_logits, frames.shape[1], frames.shape[2])
        masks = masks.cpu().numpy()
        result.mask = MaskResult(masks=masks, timestamps=np.asarray(stamps, dtype=np.float32),
                                 object_scores=track.object_score_logits.reshape(-1).float().cpu().numpy(),
                                 boxes=[mask_box(m) for m in masks])
    else:
        raise AssertionError(f"unknown head {head!r}")
