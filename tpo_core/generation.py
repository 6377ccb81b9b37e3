"""Reference inference: ``TPOModel.generate`` in PyTorch, following the inference contract.

The decode loop with task-token routing (``runtime.contract.routing.Router``), the prompt encoding
(``runtime.contract.prompt``), the post-processing (``runtime.contract.postprocess``) and the result types
(``runtime.results``) are the runtime's own: this module only supplies the PyTorch model steps (vision encoder,
LLM with a ``DynamicCache``, heads). ``tpo verify`` compares it with the runtime's ``Pipeline`` on the exported
engines.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from transformers import DynamicCache

from runtime.contract.postprocess import box_to_pixels, spans_to_seconds
from runtime.contract.routing import Router, Sampler, TaskRoute
from runtime.results import MaskResult, RegionResult, Span, TemporalResult, TPOResult
from runtime.video_io import Clip

from .checkpoint import refuse_untrained


def _load_clip(model, video) -> Clip:
    from .data.video import read_video

    if isinstance(video, Clip):
        return video
    if isinstance(video, (str, Path)):
        return read_video(video, model.config.vision.num_frames)
    raise ValueError(f"video must be a path or a Clip, got {type(video).__name__}")


def _routes(model) -> dict[int, TaskRoute]:
    placeholders = model.llm.placeholder_embeddings()
    return {begin: TaskRoute(begin, ph, placeholders[ph], head)
            for begin, (ph, head) in model.task_ids.begin_ids().items()}


def prompt_embeds(model, clip: Clip, prompt: str, boxes: torch.Tensor | None = None,
                  max_new_tokens: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, float]:
    """The prefill of ``prompt`` about ``clip``: the token layout (the contract's prompt guard: UTF-8, non-empty, no
    control tokens, one ``<track_box>`` slot per box, KV capacity), the clip's frames through the video encoder and
    the connector -> (input embeddings [1, L, D], frame features, patch tokens or None, vision milliseconds)."""
    from .data.video import preprocess_frames

    cfg = model.config
    ids = model.prompts.build(prompt, clip.timestamps, num_boxes=0 if boxes is None else int(boxes.shape[0]),
                              max_new_tokens=max_new_tokens or cfg.max_new_tokens)
    t0 = time.perf_counter()
    pixels = preprocess_frames(clip.frames, cfg.vision.img_size, cfg.vision.mean, cfg.vision.std,
                               mode=cfg.vision.resize).to(model.device, model.dtype)
    visual, frame_feats, patches = model.encode_video_patches(pixels[None])
    vision_ms = (time.perf_counter() - t0) * 1e3
    return model.sequence_embeds(ids, visual, boxes), frame_feats, patches, vision_ms


def generate(model, video, prompt: str, *, max_new_tokens: int | None = None, do_sample: bool = False,
             top_p: float = 0.9, temperature: float = 1.0, seed: int = 0, track_boxes=None,
             mask_frames: np.ndarray | None = None, mask_timestamps: np.ndarray | None = None,
             logits_processor=None) -> TPOResult:
    """Answer ``prompt`` about ``video`` (a path or a ``runtime.video_io.Clip``).

    track_boxes: normalized xyxy boxes [K, 4], one per ``<track_box>`` slot of the prompt (with no slot in the
    text, K slots are appended after the question: ``runtime.contract.prompt.PromptEncoder``).
    mask_frames: uint8 [Tm, H, W, 3] frames the mask head segments (default: the clip's sampled frames),
    with their ``mask_timestamps`` [Tm] in seconds.
    logits_processor: optional ``f(step, logits [V]) -> logits`` applied before choosing each token
    (constrained decoding, e.g. to force a task).
    Returns a ``TPOResult``: text, ids, and boxes in pixels / spans in seconds / masks at video resolution.
    """
    cfg, dev, timings = model.config, model.device, {}
    clip = _load_clip(model, video)
    max_new = max_new_tokens or cfg.max_new_tokens
    router = Router(_routes(model), stop_ids=[model.prompts.eos_id], banned_ids=[model.task_ids.track_box],
                    sampler=Sampler(do_sample, top_p, temperature, seed), logits_processor=logits_processor)
    boxes = None if track_boxes is None else torch.as_tensor(np.asarray(track_boxes), dtype=model.dtype, device=dev)
    if boxes is not None and (boxes.dim() != 2 or boxes.shape[1] != 4):
        raise ValueError(f"track_boxes must be normalized xyxy boxes [K, 4], got shape {tuple(boxes.shape)}")
    embeds, frame_feats, patches, timings["vision_ms"] = prompt_embeds(model, clip, prompt, boxes, max_new)

    t0 = time.perf_counter()
    cache = DynamicCache()
    logits, _, cache = model.llm(embeds, past_key_values=cache, use_cache=True)
    timings["prefill_ms"] = (time.perf_counter() - t0) * 1e3
    result = TPOResult(text="", token_ids=[], notes=list(clip.notes))

    def step(emb: torch.Tensor):
        nonlocal cache
        lo, hi, cache = model.llm(emb.view(1, 1, -1), past_key_values=cache, use_cache=True)
        return lo[0, -1].float().cpu().numpy(), hi[:, -1]

    def on_task(head: str, hidden: torch.Tensor) -> None:
        refuse_untrained(model, head)  # e.g. the temporal head of a converted VideoChat-TPO checkpoint
        _run_head(model, head, hidden, clip, (frame_feats, patches), result, mask_frames, mask_timestamps)

    out = router.decode(logits[0, -1].float().cpu().numpy(), max_new,
                        feed_token=lambda tok: step(model.llm.embed(torch.tensor([[tok]], device=dev)))[0],
                        feed_embedding=step, on_task=on_task)
    result.token_ids, result.tasks = out.token_ids, out.tasks
    result.text = model.prompts.decode(out.token_ids)
    result.timings_ms = {**timings, **out.timings_ms}
    return result


def _run_head(model, head: str, h: torch.Tensor, clip: Clip, features, result: TPOResult, mask_frames,
              mask_timestamps) -> None:
    """Run one head on the task embedding h [1, D] and store its post-processed output in ``result``.

    features: (frame features [1, T', Dv], patch tokens [1, T', P, Dv]) from ``encode_video_patches``."""
    frame_feats, patches = features
    patches = patches if model.uses_patches else None
    if head == "region":
        norm = model.run_region(h, patches)[0].float().cpu().numpy()
        result.region = RegionResult(box=box_to_pixels(norm, clip.width, clip.height),
                                     box_normalized=tuple(float(v) for v in norm))
    elif head == "temporal":
        times = torch.as_tensor(clip.timestamps, dtype=h.dtype, device=h.device)[None] / max(clip.duration, 1e-6)
        out = model.run_temporal(h, frame_feats, times)
        windows = spans_to_seconds(out.pred_logits[0].float().cpu().numpy(), out.pred_spans[0].float().cpu().numpy(),
                                   clip.duration, round_to=model.config.temporal.round_to_s)
        result.temporal = TemporalResult(spans=[Span(s, e, p) for s, e, p in windows],
                                         saliency=out.saliency[0].float().cpu().numpy(),
                                         saliency_times=np.asarray(clip.timestamps, dtype=np.float32))
    elif head == "mask":
        frames = clip.frames if mask_frames is None else mask_frames
        stamps = clip.timestamps if mask_frames is None else mask_timestamps
        pixels = model.mask_head.preprocess(torch.from_numpy(np.ascontiguousarray(frames))).to(h.device, h.dtype)
        track = model.run_mask(h, pixels, patches)
        masks = model.mask_head.masks_at_resolution(track.low_res_logits, frames.shape[1], frames.shape[2])
        result.mask = MaskResult.from_masks(masks.cpu().numpy(), stamps,
                                            track.object_score_logits.reshape(-1).float().cpu().numpy())
    else:
        raise AssertionError(f"unknown head {head!r}")
