"""``tpo eval``: greedy ``TPOModel.generate`` per sample, scored against the dataset's labels.

Per sample (``TaskSample``):
- routing: the heads the model ran must be exactly ``[task]`` for region/temporal/mask and ``[]`` for QA.
- region: IoU of the predicted box (pixels) with the label box (pixels); Acc@0.5 = share with IoU >= 0.5.
- temporal: IoU of the top-scoring window (seconds) with the best-overlapping label window; R1@0.5/0.7, mIoU.
- mask: per sampled frame, the predicted mask at video resolution vs the label mask: J (IoU) and F (boundary
  F-measure, ``metrics.boundary_f``); per sample the frame means; "mean IoU" = mean J over samples.
- QA: exact match after ``metrics.normalize_answer``.
- negative (a region / temporal / mask question about an object that is not in the video): *false found* =
  the model ran a head (emitted a ``*_begin`` token); also whether its text is the expected answer. Negatives
  are not part of ``routing_accuracy`` (that is over the four positive tasks).

Trivial baselines, scored on the same samples and never using the label they are scored against: region
*mean box* (the mean label box of the other evaluated region samples), temporal *whole video*, mask *mean box*
(the mean first-frame label box of the other evaluated mask samples, filled, on every frame), QA *majority
answer* (the most common label answer of the other samples with the same question text; the overall one when
no other sample asks it). ``diagnostics`` adds the spread of the predictions across samples and flags a head
whose predictions do not vary.

A task sample whose head did not run scores 0 for that head's metrics (it counts in the denominator).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ..data.collate import TEXT_TASKS
from .diagnostics import box_mask, diagnostics
from .metrics import MetricAccumulator, best_window_iou, box_iou, exact_match, summarize, video_j_and_f


def _clip(cache: dict, model, path: str):
    from ..data.video import read_video

    if path not in cache:
        cache[path] = read_video(path, model.config.vision.num_frames)
    return cache[path]


def priors(samples: list) -> dict:
    """Label-only sums behind the trivial baselines: the normalized boxes of the region samples and the
    first-frame boxes of the mask samples (sum and count each); ``mean_box`` turns them into a leave-one-out mean."""
    region = [s.box for s in samples if s.task == "region" and s.box is not None]
    mask = [s.first_frame_box for s in samples if s.task == "mask" and s.first_frame_box is not None]
    return {"region": (np.sum(region, axis=0), len(region)) if region else None,
            "mask": (np.sum(mask, axis=0), len(mask)) if mask else None}


def mean_box(prior: dict, task: str, own) -> list[float] | None:
    """The mean label box of the other evaluated samples of ``task`` (leave one out: the baseline never sees the
    label it is scored against); None when there is no other sample."""
    entry = prior.get(task)
    if entry is None or own is None or entry[1] < 2:
        return None
    total, n = entry
    return ((total - np.asarray(own, dtype=np.float64)) / (n - 1)).tolist()


def _score_region(sample, clip, res, acc: MetricAccumulator, rec: dict, prior: dict) -> None:
    w, h = clip.width, clip.height
    gt = [sample.box[0] * w, sample.box[1] * h, sample.box[2] * w, sample.box[3] * h]
    iou = box_iou(res.region.box, gt) if res.region is not None else 0.0
    acc.add("region_iou", iou)
    m = mean_box(prior, "region", sample.box)
    if m is not None:
        acc.add("region_iou_mean_box", box_iou([m[0] * w, m[1] * h, m[2] * w, m[3] * h], gt))
    rec.update(iou=iou, label=list(sample.box))
    if res.region is not None:
        b = res.region.box
        rec["pred"] = [b[0] / w, b[1] / h, b[2] / w, b[3] / h]
    if sample.box_frame is not None:
        rec["label_frame_sampled"] = bool(int(sample.box_frame) in {int(i) for i in clip.indices})


def _score_temporal(sample, clip, res, acc: MetricAccumulator, rec: dict) -> None:
    iou, dur = 0.0, max(float(clip.duration), 1e-6)
    if res.temporal is not None and res.temporal.spans:
        top = res.temporal.spans[0]
        iou = best_window_iou((top.start, top.end), sample.windows)
        rec["pred"] = [top.start / dur, top.end / dur]
    acc.add("temporal_iou", iou)
    acc.add("temporal_iou_whole_video", best_window_iou((0.0, clip.duration), sample.windows))
    longest = max(sample.windows, key=lambda w: w[1] - w[0]) if sample.windows else [0.0, 0.0]
    rec.update(iou=iou, label=[longest[0] / dur, longest[1] / dur])


def _score_mask(sample, clip, res, acc: MetricAccumulator, rec: dict, prior: dict) -> None:
    gts = np.stack([sample.segmentation.mask(int(i)) for i in clip.indices])
    jf = video_j_and_f(res.mask.masks, gts) if res.mask is not None else {"J": 0.0, "F": 0.0, "JF": 0.0}
    acc.add("mask_J", jf["J"])
    acc.add("mask_F", jf["F"])
    m = mean_box(prior, "mask", sample.first_frame_box)
    if m is not None:
        base = box_mask(m, gts.shape[1], gts.shape[2])
        acc.add("mask_J_mean_box", video_j_and_f(np.broadcast_to(base, gts.shape), gts)["J"])
    rec.update(jf, label=_mask_summary(gts[0]))
    if res.mask is not None:
        rec["pred"] = _mask_summary(res.mask.mask(0))


def _mask_summary(mask: np.ndarray) -> list[float]:
    """Bool [H, W] -> [centre x, centre y, area] normalized (centre 0.5 for an empty mask)."""
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return [0.5, 0.5, 0.0]
    return [float(xs.mean() + 0.5) / w, float(ys.mean() + 0.5) / h, float(ys.size) / (h * w)]


def score_sample(model, sample, clip, acc: MetricAccumulator, prior: dict | None = None) -> dict:
    """Run one sample and add its metrics to ``acc``; returns a per-sample record (with the prediction and the
    label in normalized units where the task has one, for ``diagnostics``)."""
    prior = prior or {}
    mask_frames = torch.from_numpy(np.ascontiguousarray(clip.frames))
    res = model.generate(clip, sample.question, mask_frames=mask_frames, mask_timestamps=clip.timestamps)
    expected = [] if sample.task in TEXT_TASKS else [sample.task]
    routed = res.tasks == expected
    rec = {"id": sample.id, "task": sample.task, "tasks": res.tasks, "text": res.text, "routed": routed}
    if sample.task == "negative":
        found = bool(res.tasks)
        acc.add("negative_found", found)
        acc.add(f"negative_found_{sample.asked}", found)
        said = exact_match(res.text, sample.answer)
        acc.add("negative_answer_em", said)
        rec.update(asked=sample.asked, found=found, answer=sample.answer, correct=said)
        return rec
    acc.add("routing", routed)
    acc.add(f"routing_{sample.task}", routed)
    if sample.task == "region":
        _score_region(sample, clip, res, acc, rec, prior)
    elif sample.task == "temporal":
        _score_temporal(sample, clip, res, acc, rec)
    elif sample.task == "mask":
        _score_mask(sample, clip, res, acc, rec, prior)
    else:
        em = exact_match(res.text, sample.answer)
        acc.add("qa_em", em)
        rec.update(question=sample.question, answer=sample.answer, correct=em)
    return rec


def select(samples: list, limit: int | None = None, per_task_limit: int | None = None) -> list:
    """At most ``per_task_limit`` samples per task (dataset order), then at most ``limit`` in total."""
    if per_task_limit:
        seen: dict[str, int] = {}
        picked = []
        for s in samples:
            if seen.get(s.task, 0) < per_task_limit:
                picked.append(s)
                seen[s.task] = seen.get(s.task, 0) + 1
        samples = picked
    return samples[:limit] if limit else samples


def _run(model, samples: list, prior: dict, progress: bool = False) -> tuple[MetricAccumulator, list[dict]]:
    model.eval()
    acc, cache, records = MetricAccumulator(), {}, []
    iterator = samples
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(samples, desc="eval", dynamic_ncols=True)
    with torch.no_grad():
        for s in iterator:
            records.append(score_sample(model, s, _clip(cache, model, s.video), acc, prior))
    return acc, records


def _finish(acc: MetricAccumulator, records: list[dict], seconds: float) -> dict:
    summary = summarize(acc)
    summary["diagnostics"] = diagnostics(records)
    summary["qa"]["baseline_majority"] = summary["diagnostics"]["qa"].get("majority_baseline")
    summary["seconds"] = round(seconds, 2)
    return summary


def evaluate(model, samples: list, limit: int | None = None, per_task_limit: int | None = None,
             progress: bool = False) -> tuple[dict, list[dict]]:
    """-> (summary dict as ``metrics.summarize`` + ``diagnostics``, per-sample records). ``limit`` caps samples
    in total, ``per_task_limit`` per task (taken in dataset order)."""
    samples = select(samples, limit, per_task_limit)
    t0 = time.perf_counter()
    acc, records = _run(model, samples, priors(samples), progress)
    return _finish(acc, records, time.perf_counter() - t0), records


def _shard(args: tuple) -> tuple[dict, list[dict]]:
    checkpoint, samples, prior, threads = args
    from ..model import TPOModel

    torch.set_num_threads(threads)
    acc, records = _run(TPOModel.from_pretrained(checkpoint), samples, prior)
    return acc.values, records


def evaluate_parallel(checkpoint, samples: list, workers: int, limit: int | None = None,
                      per_task_limit: int | None = None, threads: int = 1) -> tuple[dict, list[dict]]:
    """``evaluate`` of the checkpoint folder ``checkpoint`` on the CPU in ``workers`` processes (sample i goes to
    process i mod workers); the same summary as one process (the baselines' constants come from all samples),
    records in shard order."""
    import multiprocessing as mp

    samples = select(samples, limit, per_task_limit)
    prior, t0 = priors(samples), time.perf_counter()
    jobs = [(str(checkpoint), samples[k::workers], prior, threads) for k in range(workers) if samples[k::workers]]
    with mp.get_context("spawn").Pool(len(jobs)) as pool:
        parts = pool.map(_shard, jobs)
    acc, records = MetricAccumulator(), []
    for values, recs in parts:
        for name, vals in values.items():
            acc.values.setdefault(name, []).extend(vals)
        records += recs
    return _finish(acc, records, time.perf_counter() - t0), records


def _pct(v) -> str:
    return "  n/a" if v is None else f"{100 * v:5.1f}%"


def format_report(summary: dict) -> str:
    """Human-readable table of ``summary``: every metric beside its trivial baseline, then the diagnostics."""
    pct = _pct
    r, t, m, q, n = summary["region"], summary["temporal"], summary["mask"], summary["qa"], summary["negative"]
    rb, tb, mb = r["baseline_mean_box"], t["baseline_whole_video"], m["baseline_mean_box"]
    lines = [
        f"samples            {summary['num_samples']}  ({summary['seconds']} s)",
        f"task routing       {pct(summary['routing_accuracy'])}   by task: "
        + ", ".join(f"{k} {pct(v)}" for k, v in summary["routing_by_task"].items()),
        f"region   (n={r['count']:4d}) Acc@0.5 {pct(r['acc@0.5'])}  mean IoU {pct(r['mean_iou'])}"
        f"   (mean-box baseline: Acc@0.5 {pct(rb['acc@0.5'])}, mean IoU {pct(rb['mean_iou'])})",
        f"temporal (n={t['count']:4d}) R1@0.5 {pct(t['r1@0.5'])}  R1@0.7 {pct(t['r1@0.7'])}  mIoU {pct(t['miou'])}"
        f"   (whole-video baseline: R1@0.5 {pct(tb['r1@0.5'])}, mIoU {pct(tb['miou'])})",
        f"mask     (n={m['count']:4d}) mean IoU (J) {pct(m['J'])}  F {pct(m['F'])}  J&F {pct(m['J&F'])}"
        f"   (mean-box baseline: J {pct(mb['J'])})",
        f"qa       (n={q['count']:4d}) exact match {pct(q['accuracy'])}"
        f"   (majority-answer baseline: {pct(q.get('baseline_majority'))})",
        f"negative (n={n['count']:4d}) false found {pct(n['false_found'])}  by question form: "
        + ", ".join(f"{k} {pct(v)}" for k, v in n["false_found_by_asked"].items())
        + f"  (answer exact {pct(n['answer_em'])})",
    ]
    from .probes import format_probe

    probe = format_probe(summary.get("vision_probe"), summary.get("mask_prompt_probe"), summary.get("presence_probe"))
    if probe:
        lines.append(probe)
    diag = summary.get("diagnostics")
    if diag:
        lines.append("prediction spread (std across samples, prediction / label):")
        for head in ("region", "temporal", "mask"):
            d = diag.get(head, {})
            if d.get("pred_std") is not None:
                pairs = ", ".join(f"{k} {p:.3f}/{lab:.3f}" for k, p, lab in
                                  zip(d["fields"], d["pred_std"], d["label_std"]))
                lines.append(f"  {head:8s} (n={d['n']:4d}) {pairs}")
        qd = diag.get("qa", {})
        if qd.get("n"):
            lines.append(f"  qa       (n={qd['n']:4d}) distinct answers {qd['distinct_pred']} (labels "
                         f"{qd['distinct_label']}), most common answer {pct(qd['top_share_pred'])} of predictions")
            lines.append("  qa by type: " + ", ".join(f"{k} {pct(v['accuracy'])} (n={v['n']})"
                                                     for k, v in qd["by_type"].items()))
        for flag in diag.get("flags", []):
            lines.append(f"  FLAG: {flag}")
    return "\n".join(lines)
