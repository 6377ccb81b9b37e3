"""The probes of ``tpo eval`` (issue 12 diagnostics): which stage holds a head back?

- ``patch_probe`` (below): does the video encoder tell what each patch shows?
- ``mask_prompt_probe``: the mask head from the label box against its own prompt, and its tracked frames;
- ``presence_probe``: does the LLM work out whether the asked object is in the video (a linear probe per layer)?

The vision probe in detail:

On a dataset with patch labels (``data/patch_labels.py``) and a model with a patch classifier
(``vision.patch_classes``), every held-out video's sampled frames go through the video encoder and the
classifier; scored against the labels:

- ``patch_acc``: arg-max class accuracy on the *object patches* (at least half covered by one object), with
  ``colour_acc`` / ``shape_acc`` (the colour, the shape of the arg-max right, the other part free) and the
  trivial baseline ``majority_acc`` (always the most common object class of those patches);
- ``background_acc``: the share of background patches (at least half background) classified background;
- ``presence``: per video and object class, "is an object of this class anywhere in the sampled frames",
  predicted as "some patch's arg-max is that class", against the labels (a class is present when some patch is
  at least ``PRESENT_COVER`` covered by it): accuracy over all (video, class) pairs beside the all-absent
  baseline, the recall on present pairs and the false-positive rate on absent ones. This is what a negative
  question ("the green diamond" is not in the video) needs from the encoder.

The encoder cannot be the stage that holds a head back when these are high; when they are near their baselines,
it is.
"""

from __future__ import annotations

import numpy as np
import torch

PRESENT_COVER = 0.25  # a class counts as present in a video when some patch is at least this much covered by it


def patch_probe(model, data_dir, max_videos: int = 200) -> dict | None:
    """The probe of the module docstring on the first ``max_videos`` labelled videos of ``data_dir``; None when the
    model has no patch classifier or the data no patch labels for the model's frames and patch grid."""
    from ..data.patch_labels import NUM_CLASSES, PatchLabels, class_parts
    from ..data.video import preprocess_frames, read_video

    vision = model.vision
    cfg = model.config.vision
    labels = PatchLabels.open(data_dir)
    if (vision.patch_classifier is None or labels is None or labels.frames != cfg.num_frames
            or labels.grid != cfg.img_size // cfg.patch_size or cfg.patch_classes != NUM_CLASSES):
        return None
    preds, targets = [], []
    model.eval()
    with torch.no_grad():
        for path in list(labels.rows)[:max_videos]:
            clip = read_video(path, cfg.num_frames)
            got = labels.get(path, clip.indices)
            if got is None:
                continue
            cover, classes = got  # [T, P, K], [K]
            target = np.zeros((*cover.shape[:2], NUM_CLASSES), np.float32)
            np.add.at(target, (slice(None), slice(None), classes), cover)  # [T, P, C]
            px = preprocess_frames(clip.frames, cfg.img_size, cfg.mean, cfg.std, mode=cfg.resize)[None]
            tokens = vision(px.to(model.device, model.dtype))  # [1, T * P, D]
            logits = vision.patch_classifier(tokens)[0].float().cpu().numpy()  # [T * P, C]
            preds.append(logits.argmax(-1).reshape(cover.shape[:2]))
            targets.append(target)
    if not preds:
        return None
    pred, target = np.stack(preds), np.stack(targets)  # [V, T, P], [V, T, P, C]
    share, cls = target.max(-1), target.argmax(-1)
    obj = (share >= 0.5) & (cls > 0)
    bg = (share >= 0.5) & (cls == 0)
    out: dict = {"videos": len(preds), "object_patches": int(obj.sum()), "background_patches": int(bg.sum())}
    if obj.any():
        p, c = pred[obj], cls[obj]
        pc, ps = class_parts(p)
        cc, cs = class_parts(c)
        counts = np.bincount(c, minlength=NUM_CLASSES)
        out.update(patch_acc=float((p == c).mean()), colour_acc=float(((pc == cc) & (p > 0)).mean()),
                   shape_acc=float(((ps == cs) & (p > 0)).mean()), majority_acc=float(counts.max() / counts.sum()))
    if bg.any():
        out["background_acc"] = float((pred[bg] == 0).mean())
    present = (target.max(axis=(1, 2)) >= PRESENT_COVER)[:, 1:]  # [V, C - 1]
    predicted = np.stack([np.isin(np.arange(1, NUM_CLASSES), v) for v in pred])  # any patch's arg-max
    out["presence"] = {"accuracy": float((present == predicted).mean()),
                       "recall": float(predicted[present].mean()) if present.any() else None,
                       "false_positive_rate": float(predicted[~present].mean()) if (~present).any() else None,
                       "baseline_all_absent_accuracy": float((~present).mean())}
    return out


def _fit_logistic(x: torch.Tensor, y: torch.Tensor, l2: float) -> tuple[torch.Tensor, torch.Tensor]:
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def _linear_probe_accuracy(x: torch.Tensor, y: torch.Tensor, train: torch.Tensor,
                           l2_grid: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0)) -> float:
    """Logistic regression (L-BFGS) on the ``train`` rows of standardized features ``x [N, D]`` for labels ``y [N]``
    in {0, 1}; accuracy on the other rows. The L2 weight is chosen from ``l2_grid`` by a 2-fold split of the train
    rows (a state has more dimensions than a probe has questions: without it the probe fits noise)."""
    mu, sd = x[train].mean(0), x[train].std(0) + 1e-6
    x = (x - mu) / sd
    rows = torch.nonzero(train).flatten()
    folds = (rows[0::2], rows[1::2])

    def acc(w, b, idx):
        return float((((x[idx] @ w + b) > 0).float() == y[idx]).float().mean())

    best = max(l2_grid, key=lambda lam: sum(acc(*_fit_logistic(x[a], y[a], lam), b_)
                                            for a, b_ in (folds, folds[::-1])))
    return acc(*_fit_logistic(x[train], y[train], best), torch.nonzero(~train).flatten())


def presence_probe(model, samples: list, per_class: int = 100, seed: int = 0) -> dict | None:
    """Does the LLM work out whether the asked object is in the video? On up to ``per_class`` questions about present
    objects (region, temporal, mask samples) and as many about absent ones (negatives), the LLM's state at the
    answer position, every layer: a linear probe of "present" trained on the questions of half the videos and tested
    on the other half, beside the model's own decision (its first answer token opens a head = "present"). A probe
    near the decision means the LLM's last layer carries no more than it uses; a probe near 50 % means the LLM never
    computed it (its visual inputs may still hold it: the vision probe says). None without both kinds."""
    from ..data.video import read_video
    from ..generation import prompt_embeds

    rng = np.random.default_rng(seed)
    pos = [s for s in samples if s.task in ("region", "temporal", "mask")]
    neg = [s for s in samples if s.task == "negative"]
    if not pos or not neg:
        return None
    pos, neg = ([group[i] for i in rng.permutation(len(group))[:per_class]] for group in (pos, neg))
    cfg, begins = model.config, set(model.task_ids.begin_ids())
    model.eval()
    states, labels, heads, videos = [], [], [], []
    with torch.no_grad():
        for label, group in ((1, pos), (0, neg)):
            for s in group:
                embeds = prompt_embeds(model, read_video(s.video, cfg.vision.num_frames), s.question)[0]
                out = model.llm.lm(inputs_embeds=embeds, output_hidden_states=True, return_dict=True)
                states.append(torch.stack([h[0, -1].float().cpu() for h in out.hidden_states]))  # [layers + 1, D]
                heads.append(int(int(out.logits[0, -1].argmax()) in begins))
                labels.append(label)
                videos.append(s.video)
    lab, d = np.array(labels), np.array(heads)
    x, y = torch.stack(states), torch.from_numpy(lab).float()
    held = set(sorted(set(videos))[::2])  # half the videos test the probe (no video on both sides)
    train = torch.tensor([v not in held for v in videos])
    if train.all() or not train.any() or len(set(lab[train.numpy()].tolist())) < 2:
        return None
    return {"questions": len(labels), "present": int(lab.sum()), "test_questions": int((~train).sum()),
            "decision_accuracy": float(np.mean(d == lab)), "heads_on_absent": float(d[lab == 0].mean()),
            "denials_of_present": float(1 - d[lab == 1].mean()),
            "layer_probe_accuracy": [_linear_probe_accuracy(x[:, k], y, train) for k in range(x.shape[1])]}


def format_probe(probe: dict | None, mask: dict | None = None, presence: dict | None = None) -> str | None:
    """``tpo eval``'s report lines of the vision probe, the mask-prompt probe and the LLM presence probe (None when
    there is none)."""
    lines = []
    if presence:
        layers = ", ".join(f"{100 * a:.1f}" for a in presence["layer_probe_accuracy"])
        lines.append(f"presence (n={presence['questions']:4d}) the LLM's own call (a head = present) "
                     f"{100 * presence['decision_accuracy']:5.1f}% (heads on absent "
                     f"{100 * presence['heads_on_absent']:.1f}%, denials {100 * presence['denials_of_present']:.1f}%); "
                     f"linear probe of its state per layer (embeddings .. last, {presence['test_questions']} held-out "
                     f"questions, 50 % = chance): {layers}%")
    if mask:
        oracle, own = 100 * mask["J_label_box_prompt"], 100 * mask["J_model"]
        lines.append(f"mask probe (n={mask['samples']:4d}) J tracking from the label box {oracle:5.1f}% vs from the "
                     f"model's own prompt {own:5.1f}% (the gap is what the prompt costs; the label-box J is what the "
                     "segmenter reaches)")
        pj, am = mask.get("J_tracked_present"), mask.get("absent_frames_masked")
        if pj is not None or am is not None:
            lines.append("  from the label box, on the tracked frames: J where the object is visible "
                         f"{'n/a' if pj is None else f'{100 * pj:5.1f}%'} ({mask.get('tracked_present_frames', 0)} "
                         f"frames); a mask drawn where it is absent {'n/a' if am is None else f'{100 * am:5.1f}%'} "
                         f"({mask.get('tracked_absent_frames', 0)} frames; 0 % is right)")
    if not probe or "patch_acc" not in probe:
        return "\n".join(lines) or None
    pr = probe["presence"]
    return "\n".join([*lines, f"vision   (v={probe['videos']:4d}) patch class {100 * probe['patch_acc']:5.1f}% (colour "
            f"{100 * probe['colour_acc']:.1f}%, shape {100 * probe['shape_acc']:.1f}%; majority-class baseline "
            f"{100 * probe['majority_acc']:.1f}%) on {probe['object_patches']} object patches; background "
            f"{100 * probe.get('background_acc', float('nan')):.1f}%; class presence per video: accuracy "
            f"{100 * pr['accuracy']:.1f}% (all-absent baseline {100 * pr['baseline_all_absent_accuracy']:.1f}%), "
            f"recall {100 * (pr['recall'] or 0):.1f}%, false positives {100 * (pr['false_positive_rate'] or 0):.1f}%"])


def track_from_label_box(model, first_mask: np.ndarray, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The mask head tracking ``frames`` (uint8 [T, H, W, 3]) from the box around ``first_mask`` (bool [H, W], the
    label of frame 0, non-empty), prompted as a perfect pointer would (``MaskHead.embed_boxes``, and the box itself
    for a ``box_mask_prompt`` head) -> (bool masks [T, H, W] at the label's resolution, normalized xyxy box [4])."""
    from ..data.rle import mask_bbox
    from ..modeling.heads.mask_track import track

    head = model.mask_head
    h, w = first_mask.shape
    label_box = np.asarray(mask_bbox(first_mask), np.float64) / (w, h, w, h)
    box = torch.tensor(label_box[None], dtype=model.dtype, device=model.device)
    pixels = head.preprocess(torch.from_numpy(np.ascontiguousarray(frames))).to(model.device, model.dtype)
    out = track(head, pixels, head.embed_boxes(box), box=box)
    return head.masks_at_resolution(out.low_res_logits.float(), h, w).cpu().numpy(), label_box


def tracked_frame_split(masks: np.ndarray, gts: np.ndarray) -> tuple[list[float], list[bool]]:
    """Predicted and label masks (bool [T, H, W]) of one track -> (J of each tracked frame where the object is
    visible, whether a mask was drawn on each tracked frame where it is absent); frame 0 (the prompt) is left out."""
    from .metrics import video_j_and_f

    present_j, absent_masked = [], []
    for k in range(1, len(gts)):
        if gts[k].any():
            present_j.append(float(video_j_and_f(masks[k:k + 1], gts[k:k + 1])["J"]))
        else:
            absent_masked.append(bool(masks[k].any()))
    return present_j, absent_masked


def mask_prompt_probe(model, samples: list, max_samples: int = 100) -> dict | None:
    """Which part holds mask J back: the prompt or the segmenter? On up to ``max_samples`` mask samples, J (as
    ``tpo eval`` scores it: every sampled frame at video resolution) of the mask head tracking from the *label*
    box of frame 0 (``MaskHead.embed_boxes``, the prompt a perfect pointer would give), beside J of the mask-head
    prompt the model itself gives for the sample's question (the LLM's ``<tracking>`` state through the
    pointer, as ``generate`` runs it) and the IoU of the box around its frame-0 mask with the label box. None
    without mask samples or without the pointer (the 7B release's prompt MLP gives no box)."""
    from ..data.rle import mask_bbox
    from ..data.video import read_video
    from .metrics import box_iou, video_j_and_f

    head = model.mask_head
    picked = [s for s in samples if s.task == "mask" and s.first_frame_box is not None][:max_samples]
    if not picked or not hasattr(head, "embed_boxes") or not head.uses_patches:
        return None
    model.eval()
    oracle, own, ious, present_j, absent_masked = [], [], [], [], []
    with torch.no_grad():
        for s in picked:
            clip = read_video(s.video, model.config.vision.num_frames)
            gts = np.stack([s.segmentation.mask(int(i)) for i in clip.indices])
            if not gts[0].any():
                continue
            h, w = gts.shape[1:]
            masks, label_box = track_from_label_box(model, gts[0], clip.frames)
            oracle.append(video_j_and_f(masks, gts)["J"])
            pj, am = tracked_frame_split(masks, gts)
            present_j += pj
            absent_masked += am
            res = model.generate(clip, s.question)  # as tpo eval runs it: tracks the clip's sampled frames
            own.append(video_j_and_f(res.mask.masks, gts)["J"] if res.mask is not None else 0.0)
            pred = mask_bbox(res.mask.mask(0)) if res.mask is not None else None
            if pred is not None:
                ious.append(box_iou(np.asarray(pred, np.float64) / (w, h, w, h), label_box))
    if not oracle:
        return None
    return {"samples": len(oracle), "J_label_box_prompt": float(np.mean(oracle)), "J_model": float(np.mean(own)),
            "frame0_mask_box_iou_vs_label": float(np.mean(ious)) if ious else None,
            "tracked_present_frames": len(present_j),
            "J_tracked_present": float(np.mean(present_j)) if present_j else None,
            "tracked_absent_frames": len(absent_masked),
            "absent_frames_masked": float(np.mean(absent_masked)) if absent_masked else None}
