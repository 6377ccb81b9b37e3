"""The vision probe of ``tpo eval``: does the video encoder tell what each patch shows? (issue 12 diagnostics)

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


def format_probe(probe: dict | None, mask: dict | None = None) -> str | None:
    """``tpo eval``'s report lines of the vision probe and the mask-prompt probe (None when there is neither)."""
    lines = []
    if mask:
        oracle, own = 100 * mask["J_label_box_prompt"], 100 * mask["J_model"]
        lines.append(f"mask probe (n={mask['samples']:4d}) J tracking from the label box {oracle:5.1f}% vs from the "
                     f"model's own prompt {own:5.1f}% (the gap is what the prompt costs; the label-box J is what the "
                     "segmenter reaches)")
        if mask.get("J_tracked_present") is not None or mask.get("absent_frames_masked") is not None:
            pj, am = mask.get("J_tracked_present"), mask.get("absent_frames_masked")
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
