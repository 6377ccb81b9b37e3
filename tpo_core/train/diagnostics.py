"""``tpo eval`` diagnostics: how much the predictions vary across samples, the QA majority baseline, flags.

A head that answers every sample with about the same output (the failure of the first embedded default:
one box for every question, one span for every video) can still score near a trivial baseline. These
numbers catch it directly, from the per-sample records of ``evaluate.score_sample``:

- region: std across samples of the predicted box centre x / y, width, height (normalized to the frame)
  beside the same std of the labels;
- temporal: std of the predicted top window's start / end (normalized to the duration) beside the labels'
  (the longest label window);
- mask: std of the predicted frame-0 mask's centre x / y and area fraction beside the labels';
- qa: distinct answers and the share of the most common answer, predicted vs labelled; the *majority
  baseline*: for each sample, the most common label answer among the *other* evaluated samples with the same
  question text (all other samples when none asks it), scored as if it were the model's answer (a tie for
  the most common answer counts as wrong); the accuracy per question type (``by_type``: position, count,
  colour of, ...; the position questions need the same look-up as a region box).

Flags (``diagnostics(records)["flags"]``): a head whose mean prediction std is below ``FLAT_RATIO`` (0.2) of
its labels' mean std, or whose answers are one answer in more than 90 % of the samples while the labels are
not; region labels that lie on a frame the model does not sample.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from .metrics import normalize_answer

FLAT_RATIO = 0.2
FIELDS = {"region": ("cx", "cy", "w", "h"), "temporal": ("start", "end"), "mask": ("cx", "cy", "area")}


def box_mask(box, height: int, width: int) -> np.ndarray:
    """A filled normalized xyxy box as a bool mask [H, W] (pixel centres inside the box)."""
    ys = (np.arange(height) + 0.5) / height
    xs = (np.arange(width) + 0.5) / width
    inside_y = (ys >= box[1]) & (ys <= box[3])
    inside_x = (xs >= box[0]) & (xs <= box[2])
    return inside_y[:, None] & inside_x[None, :]


def _as_fields(task: str, v) -> list[float]:
    if task == "region":  # xyxy -> centre, size (corners ordered)
        x0, x1 = sorted((v[0], v[2]))
        y0, y1 = sorted((v[1], v[3]))
        return [(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0]
    return [float(x) for x in v]


def _spread(records: list[dict], task: str) -> dict:
    rows = [r for r in records if r["task"] == task and "label" in r]
    preds = np.array([_as_fields(task, r["pred"]) for r in rows if "pred" in r], dtype=np.float64)
    labels = np.array([_as_fields(task, r["label"]) for r in rows], dtype=np.float64)
    out: dict = {"n": len(rows), "n_pred": int(len(preds)), "fields": list(FIELDS[task]),
                 "pred_std": None, "label_std": None, "pred_mean": None}
    if len(labels) >= 2:
        out["label_std"] = [round(float(x), 4) for x in labels.std(axis=0)]
    if len(preds) >= 2:
        out["pred_std"] = [round(float(x), 4) for x in preds.std(axis=0)]
        out["pred_mean"] = [round(float(x), 4) for x in preds.mean(axis=0)]
    return out


QA_TYPES = (("position", "In which part of the frame"), ("count", "How many"),
            ("background", "What colour is the background"), ("colour_of", "What colour is"),
            ("shape_of", "What shape is"), ("which_moves", "Which shape moves"), ("does_move", "Does the"),
            ("which_appears", "Which shape appears"), ("which_disappears", "Which shape disappears"))


def qa_type(question: str) -> str:
    """The synthetic QA template a question comes from (``other`` for anything else)."""
    return next((name for name, prefix in QA_TYPES if question.startswith(prefix)), "other")


def _qa(records: list[dict]) -> dict:
    rows = [r for r in records if r["task"] == "qa"]
    if not rows:
        return {"n": 0}
    by_type: dict[str, list[bool]] = {}
    for r in rows:
        by_type.setdefault(qa_type(r.get("question", "")), []).append(bool(r.get("correct")))
    preds = [normalize_answer(r["text"]) for r in rows]
    labels = [normalize_answer(r["answer"]) for r in rows]
    by_question: dict[str, Counter] = {}
    for r, lab in zip(rows, labels):
        by_question.setdefault(r.get("question", ""), Counter())[lab] += 1
    overall = Counter(labels)
    hits = []
    for r, lab in zip(rows, labels):  # leave one out: the sample's own label never votes
        others = by_question[r.get("question", "")].copy()
        others[lab] -= 1
        if sum(others.values()) == 0:
            others = overall.copy()
            others[lab] -= 1
        top = max(others.values(), default=0)
        hits.append(top > 0 and others[lab] == top and sum(v == top for v in others.values()) == 1)
    base = float(np.mean(hits))
    return {"n": len(rows), "distinct_pred": len(set(preds)), "distinct_label": len(set(labels)),
            "top_share_pred": Counter(preds).most_common(1)[0][1] / len(rows),
            "top_share_label": Counter(labels).most_common(1)[0][1] / len(rows),
            "majority_baseline": round(base, 4),
            "by_type": {k: {"n": len(v), "accuracy": round(float(np.mean(v)), 4)} for k, v in sorted(by_type.items())}}


def _flags(out: dict, records: list[dict]) -> list[str]:
    flags = []
    for task in FIELDS:
        d = out[task]
        if d["pred_std"] is None or d["label_std"] is None:
            if d["n"] >= 2 and d["n_pred"] < 2:
                flags.append(f"{task}: the head ran on {d['n_pred']} of {d['n']} samples (no spread to measure)")
            continue
        p, lab = float(np.mean(d["pred_std"])), float(np.mean(d["label_std"]))
        if lab > 0 and p < FLAT_RATIO * lab:
            flags.append(f"{task}: predictions do not vary across samples (mean std {p:.4f} vs labels "
                         f"{lab:.4f}; mean prediction {d['pred_mean']})")
    q = out["qa"]
    if q.get("n", 0) >= 10 and q["top_share_pred"] > 0.9 and q["top_share_label"] < 0.5:
        flags.append(f"qa: {100 * q['top_share_pred']:.0f} % of the answers are one answer (labels: "
                     f"{100 * q['top_share_label']:.0f} %)")
    off = [r for r in records if r["task"] == "region" and r.get("label_frame_sampled") is False]
    if off:
        n = sum(r["task"] == "region" for r in records)
        flags.append(f"region: {len(off)} of {n} labels are on a frame the model does not sample (their box "
                     "cannot be seen; regenerate the data with `tpo data synth`)")
    return flags


def diagnostics(records: list[dict]) -> dict:
    """Spread of predictions vs labels per head, the QA majority baseline and flags (module docstring)."""
    out = {task: _spread(records, task) for task in FIELDS}
    out["qa"] = _qa(records)
    out["flags"] = _flags(out, records)
    return out
