"""``tpo eval``: greedy ``TPOModel.generate`` per sample, scored against the dataset's labels.

Per sample (``TaskSample``):
- routing: the heads the model ran must be exactly ``[task]`` for region/temporal/mask and ``[]`` for QA.
- region: IoU of the predicted box (pixels) with the label box (pixels); Acc@0.5 = share with IoU >= 0.5.
- temporal: IoU of the top-scoring window (seconds) with the best-overlapping label window; R1@0.5/0.7, mIoU;
  also the same metrics for the trivial "whole video" window (a baseline: synthetic objects are often
  visible for most of the video).
- mask: per sampled frame, the predicted mask at video resolution vs the label mask: J (IoU) and F (boundary
  F-measure, ``metrics.boundary_f``); per sample the frame means; "mean IoU" = mean J over samples.
- QA: exact match after ``metrics.normalize_answer``.

A task sample whose head did not run scores 0 for that head's metrics (it counts in the denominator).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from .metrics import MetricAccumulator, best_window_iou, box_iou, exact_match, summarize, video_j_and_f


def _clip(cache: dict, model, path: str):
    from ..data.video import read_video

    if path not in cache:
        cache[path] = read_video(path, model.config.vision.num_frames)
    return cache[path]


def score_sample(model, sample, clip, acc: MetricAccumulator) -> dict:
    """Run one sample and add its metrics to ``acc``; returns a per-sample record."""
    mask_frames = torch.from_numpy(np.ascontiguousarray(clip.frames))
    res = model.generate(clip, sample.question, mask_frames=mask_frames, mask_timestamps=clip.timestamps)
    expected = [] if sample.task == "qa" else [sample.task]
    routed = res.tasks == expected
    acc.add("routing", routed)
    acc.add(f"routing_{sample.task}", routed)
    rec = {"id": sample.id, "task": sample.task, "tasks": res.tasks, "text": res.text, "routed": routed}
    if sample.task == "region":
        gt = [sample.box[0] * clip.width, sample.box[1] * clip.height, sample.box[2] * clip.width,
              sample.box[3] * clip.height]
        iou = box_iou(res.region.box, gt) if res.region is not None else 0.0
        acc.add("region_iou", iou)
        rec["iou"] = iou
    elif sample.task == "temporal":
        iou = 0.0
        if res.temporal is not None and res.temporal.spans:
            top = res.temporal.spans[0]
            iou = best_window_iou((top.start, top.end), sample.windows)
        acc.add("temporal_iou", iou)
        acc.add("temporal_iou_whole_video", best_window_iou((0.0, clip.duration), sample.windows))
        rec["iou"] = iou
    elif sample.task == "mask":
        gts = np.stack([sample.segmentation.mask(int(i)) for i in clip.indices])
        if res.mask is not None:
            jf = video_j_and_f(res.mask.masks, gts)
        else:
            jf = {"J": 0.0, "F": 0.0, "JF": 0.0}
        acc.add("mask_J", jf["J"])
        acc.add("mask_F", jf["F"])
        rec.update(jf)
    else:
        em = exact_match(res.text, sample.answer)
        acc.add("qa_em", em)
        rec.update(answer=sample.answer, correct=em)
    return rec


def evaluate(model, samples: list, limit: int | None = None, per_task_limit: int | None = None,
             progress: bool = False) -> tuple[dict, list[dict]]:
    """-> (summary dict as ``metrics.summarize``, per-sample records). ``limit`` caps samples in total,
    ``per_task_limit`` per task (taken in dataset order)."""
    if per_task_limit:
        seen: dict[str, int] = {}
        picked = []
        for s in samples:
            if seen.get(s.task, 0) < per_task_limit:
                picked.append(s)
                seen[s.task] = seen.get(s.task, 0) + 1
        samples = picked
    if limit:
        samples = samples[:limit]
    model.eval()
    acc, cache, records = MetricAccumulator(), {}, []
    t0 = time.perf_counter()
    iterator = samples
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(samples, desc="eval", dynamic_ncols=True)
    with torch.no_grad():
        for s in iterator:
            records.append(score_sample(model, s, _clip(cache, model, s.video), acc))
    summary = summarize(acc)
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    return summary, records


def format_report(summary: dict) -> str:
    """Human-readable table of ``summary``."""
    def pct(v):
        return "  n/a" if v is None else f"{100 * v:5.1f}%"

    r, t, m, q = summary["region"], summary["temporal"], summary["mask"], summary["qa"]
    lines = [
        f"samples            {summary['num_samples']}  ({summary['seconds']} s)",
        f"task routing       {pct(summary['routing_accuracy'])}   by task: "
        + ", ".join(f"{k} {pct(v)}" for k, v in summary["routing_by_task"].items()),
        f"region   (n={r['count']:4d}) Acc@0.5 {pct(r['acc@0.5'])}  mean IoU {pct(r['mean_iou'])}",
        f"temporal (n={t['count']:4d}) R1@0.5 {pct(t['r1@0.5'])}  R1@0.7 {pct(t['r1@0.7'])}  mIoU {pct(t['miou'])}"
        f"   (whole-video baseline: R1@0.5 {pct(t['baseline_whole_video']['r1@0.5'])}, "
        f"mIoU {pct(t['baseline_whole_video']['miou'])})",
        f"mask     (n={m['count']:4d}) mean IoU (J) {pct(m['J'])}  F {pct(m['F'])}  J&F {pct(m['J&F'])}",
        f"qa       (n={q['count']:4d}) exact match {pct(q['accuracy'])}",
    ]
    return "\n".join(lines)
