"""Synthetic video dataset with exact labels for all TPO tasks: ``tpo data synth --out DIR --videos N --seed S``.

Writes into DIR (formats and semantics: docs/data.md):
- ``videos/<vid>.mp4``: H.264 (PyAV ``libx264``; ``mpeg4`` when the av wheel lacks it), yuv420p.
- ``temporal.jsonl`` (QVHighlights), ``region.json`` (RefCOCO-style), ``segmentation.json`` + PNG masks
  ``masks/<vid>/<obj>/<frame:05d>.png`` (MeViS-style), ``conversations.json`` (LLaVA), ``manifest.json``.

Semantics: an object is *visible* in a frame when at least one of its pixels is drawn after occlusion.
Temporal windows are the runs of visible frames in seconds (frame f spans [f/fps, (f+1)/fps)); saliency is
given per 1 s clip (QVHighlights uses 2 s clips). Region boxes refer to the middle *sampled* frame
``region_label_frame(n) = int((4 + 0.5) * n / 8)``: frame 4 of the 8 frames a model samples with the release's
middle-of-segment rule (``video.sample_indices``), so the labelled frame is one the model sees (the tiny
preset samples 8 frames). Masks and boxes are exactly the visible pixels, so a mask's bbox equals its box label.
``negatives.json`` holds questions about objects that are not in the video (``synth_tasks.make_negatives``).
``patch_labels.npz`` (generator version 3) holds what every 8 x 8 cell of the 8 sampled frames shows, for the
dense vision loss (``patch_labels.py``).
Besides the templated QA, each video with a region label gets one *position* question ("In which part of the
frame is the red circle?" -> "top left", the 3 x 3 cell of the region box's centre on the labelled frame): a
classification the LM loss teaches from stage 1, which needs the same look-up as the box.
Deterministic: video i of a split uses ``numpy.random.default_rng([seed, SPLIT_SALT[split], i])``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from tpo_core.data.formats import FORMAT_VERSIONS
from tpo_core.data.patch_labels import FILE as PATCH_FILE
from tpo_core.data.patch_labels import FRAMES as PATCH_FRAMES
from tpo_core.data.patch_labels import GRID as PATCH_GRID
from tpo_core.data.patch_labels import NUM_CLASSES as NUM_PATCH_CLASSES
from tpo_core.data.patch_labels import scene_patch_labels, write_patch_labels
from tpo_core.data.rle import encode as rle_encode
from tpo_core.data.rle import mask_bbox
from tpo_core.data.synth_scene import (
    SceneSpec,
    compose_frame,
    render_background,
    render_labels,
    sample_scene,
    unoccluded_area,
)
from tpo_core.data.synth_tasks import (
    POSITION_QUESTION,
    TEMPORAL_QUERY,
    TaskSample,
    extra_train_qa,
    make_negatives,
    make_qa,
    position_answer,
    task_samples,
)
from tpo_core.data.video import sample_indices

__all__ = ["TaskSample", "add_synth_parser", "generate", "generate_dataset", "run_synth", "synth_main",
           "task_samples"]

# 2: region boxes on a sampled frame, negatives.json, position questions; 3: patch_labels.npz; 4: the train split gets
# more QA (every turn, a shape question per object, a position question per region label) and 6 negatives per
# video (the extra 4 name an absent object with a present colour); the val split is unchanged from version 3
GENERATOR_VERSION = 4
SPLIT_SALT = {"train": 0, "val": 1}
CLIP_LEN_S = 1.0
MIN_REGION_VISIBLE = 0.3  # region records only for objects with >= 30 % of their area visible in the box frame
REGION_LABEL_FRAMES = 8  # region boxes are labelled on sampled frame REGION_LABEL_FRAMES // 2 of this many
NEGATIVES_PER_VIDEO = {"train": 6, "val": 2}  # questions about absent objects per video (negatives.json)
QA_TURNS = {"train": 99, "val": 4}  # make_qa's max_turns: training keeps every templated question
MASK_MODES = ("png", "rle", "both")
_PNG_OPTS = [cv2.IMWRITE_PNG_BILEVEL, 1, cv2.IMWRITE_PNG_COMPRESSION, 3]


def pick_codec() -> str:
    """'libx264' when the av wheel has it, else 'mpeg4'."""
    import av

    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def write_mp4(path: Path, frames, fps: int, width: int, height: int, codec: str) -> None:
    """Encode an iterable of uint8 RGB frames [H, W, 3] to an MP4 (single-threaded, deterministic)."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.thread_count = 1
        if codec == "libx264":
            stream.options = {"crf": "16", "preset": "veryfast", "threads": "1"}
        else:
            stream.bit_rate = 4_000_000
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _runs(visible: np.ndarray) -> list[tuple[int, int]]:
    """Bool [T] -> [(start, end_exclusive), ...] runs of True."""
    v = np.concatenate(([False], visible, [False])).astype(np.int8)
    d = np.diff(v)
    return list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist()))


def _norm_box(box: list[int], w: int, h: int) -> list[float]:
    return [box[0] / w, box[1] / h, box[2] / w, box[3] / h]


def _temporal(scene: SceneSpec, obj, visible: np.ndarray, qid: int, video: str) -> dict:
    fps, n = scene.fps, scene.num_frames
    windows = [[round(a / fps, 6), round(b / fps, 6)] for a, b in _runs(visible)]
    clip_of = (np.arange(n) / fps // CLIP_LEN_S).astype(int)
    clips, scores = [], []
    for c in range(int(clip_of.max()) + 1):
        cover = float(visible[clip_of == c].mean())
        if cover > 0:
            s = int(min(4, max(1, round(4 * cover))))
            clips.append(c)
            scores.append([s, s, s])
    return {"qid": qid, "query": TEMPORAL_QUERY.format(p=obj.phrase), "duration": round(scene.duration, 6),
            "vid": scene.vid, "relevant_windows": windows, "relevant_clip_ids": clips, "saliency_scores": scores,
            "video": video, "phrase": obj.phrase, "object_id": obj.obj_id, "fps": fps, "clip_len": CLIP_LEN_S}


def _write_masks(out: Path, scene: SceneSpec, obj, labels: np.ndarray, visible: np.ndarray,
                 mode: str) -> list[dict]:
    entries = []
    rel_dir = Path("masks") / scene.vid / str(obj.obj_id)
    if mode in ("png", "both"):
        (out / rel_dir).mkdir(parents=True, exist_ok=True)
    for f in np.flatnonzero(visible).tolist():
        m = labels[f] == obj.obj_id
        entry: dict = {"frame": f}
        if mode in ("png", "both"):
            rel = rel_dir / f"{f:05d}.png"
            ok, png = cv2.imencode(".png", m.astype(np.uint8) * 255, _PNG_OPTS)  # 1-bit PNG, 0/255 when read
            assert ok, f"cv2 failed to encode mask {rel}"
            (out / rel).write_bytes(png.tobytes())
            entry["file"] = rel.as_posix()
        if mode in ("rle", "both"):
            entry["rle"] = rle_encode(m)
        entries.append(entry)
    return entries


def region_label_frame(num_frames: int, sampled: int = REGION_LABEL_FRAMES) -> int:
    """The frame a region box is labelled on: sampled frame ``sampled // 2`` of ``sample_indices(n, sampled)``
    (``int((sampled // 2 + 0.5) * n / sampled)``), i.e. the middle frame that a ``sampled``-frame model sees."""
    return int(sample_indices(num_frames, sampled)[sampled // 2])


def _scene_ok(scene: SceneSpec, labels: np.ndarray) -> bool:
    return all((labels == o.obj_id).any() for o in scene.objects)


def generate_video(out: Path, split: str, seed: int, index: int, codec: str, mask_mode: str = "png") -> dict:
    """Render, encode and label video ``index``; returns its annotation records (JSON-ready)."""
    rng = np.random.default_rng([seed, SPLIT_SALT[split], index])
    vid = f"{split}_{index:05d}"
    for _ in range(50):  # resample until every object is visible in at least one frame
        scene = sample_scene(rng, vid)
        labels = render_labels(scene)
        if _scene_ok(scene, labels):
            break
    else:
        raise RuntimeError(f"synth: could not sample a valid scene for {vid} (seed {seed}); try another seed")
    video = f"videos/{vid}.mp4"
    bg = render_background(scene)
    write_mp4(out / video, (compose_frame(bg, labels[f], scene) for f in range(scene.num_frames)),
              scene.fps, scene.width, scene.height, codec)
    w, h, n = scene.width, scene.height, scene.num_frames
    mid = region_label_frame(n)
    rec: dict = {"temporal": [], "region": [], "segmentation": []}
    common = {"video": video, "vid": vid, "width": w, "height": h}
    for obj in scene.objects:
        m = labels == obj.obj_id
        visible = m.reshape(n, -1).any(axis=1)
        oid = f"{vid}_o{obj.obj_id}"
        rec["temporal"].append(_temporal(scene, obj, visible, index * 10 + obj.obj_id, video))
        area = int(m[mid].sum())
        if visible[mid] and area >= MIN_REGION_VISIBLE * unoccluded_area(scene, obj, mid):
            rec["region"].append({"id": oid, **common, "query": obj.phrase, "object_id": obj.obj_id,
                                  "frame_index": mid, "time": round(mid / scene.fps, 6),
                                  "box": _norm_box(mask_bbox(m[mid]), w, h), "moving": obj.moving,
                                  "duration": round(scene.duration, 6)})
        first = int(np.argmax(visible))
        rec["segmentation"].append({
            "id": oid, **common, "query": obj.phrase, "object_id": obj.obj_id, "num_frames": n, "fps": scene.fps,
            "duration": round(scene.duration, 6), "first_frame_index": first,
            "first_frame_box": _norm_box(mask_bbox(m[first]), w, h),
            "masks": _write_masks(out, scene, obj, labels, visible, mask_mode),
            "absent_frames": np.flatnonzero(~visible).tolist()})
    qa = make_qa(scene, rng, max_turns=QA_TURNS[split])
    if rec["region"]:  # one position question about an object with a region label (its own generator)
        r = rec["region"][int(np.random.default_rng([seed, SPLIT_SALT[split], index, 2]).integers(len(rec["region"])))]
        qa.append((POSITION_QUESTION.format(p=r["query"]), position_answer(r["box"])))
    if split == "train":  # binding colour to shape and position is what the tiny LLM learns slowest: ask it of all
        qa += extra_train_qa(scene, rec["region"], qa, np.random.default_rng([seed, SPLIT_SALT[split], index, 3]))
    turns = []
    for j, (q, a) in enumerate(qa):
        turns += [{"from": "human", "value": ("<video>\n" if j == 0 else "") + q}, {"from": "gpt", "value": a}]
    rec["conversation"] = {"id": vid, "video": video, "conversations": turns, "duration": round(scene.duration, 6)}
    # a separate generator, so adding negatives left the videos and the QA of version 1 unchanged
    neg_rng = np.random.default_rng([seed, SPLIT_SALT[split], index, 1])
    rec["negatives"] = [{"id": f"{vid}_n{j}", **common, **neg, "duration": round(scene.duration, 6)}
                        for j, neg in enumerate(make_negatives(scene, neg_rng, NEGATIVES_PER_VIDEO[split]))]
    rec["patch"] = scene_patch_labels(scene, labels)
    rec["frames"] = n
    return rec


def _job(args: tuple) -> dict:
    return generate_video(*args)


def generate(out: str | Path, videos: int, seed: int, split: str = "train", *, workers: int = 1,
             mask_mode: str = "png", overwrite: bool = False) -> dict:
    """Write a whole synthetic split into ``out``; returns the manifest (also written to manifest.json)."""
    if split not in SPLIT_SALT:
        raise ValueError(f"synth: split={split!r} is not allowed; choose one of {sorted(SPLIT_SALT)}")
    if mask_mode not in MASK_MODES:
        raise ValueError(f"synth: masks={mask_mode!r} is not allowed; choose one of {MASK_MODES}")
    if videos <= 0:
        raise ValueError(f"synth: --videos must be > 0, got {videos}")
    out = Path(out)
    if (out / "manifest.json").exists():
        if not overwrite:
            raise FileExistsError(f"synth: {out} already holds a dataset (manifest.json); pass --overwrite to "
                                  "replace it or choose another --out (use one folder per split)")
        for sub in ("videos", "masks"):
            shutil.rmtree(out / sub, ignore_errors=True)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    codec = pick_codec()
    jobs = [(out, split, seed, i, codec, mask_mode) for i in range(videos)]
    t0 = time.perf_counter()
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            recs = list(pool.map(_job, jobs, chunksize=4))
    else:
        recs = [_job(j) for j in jobs]
    elapsed = time.perf_counter() - t0
    files = {"temporal": "temporal.jsonl", "region": "region.json", "segmentation": "segmentation.json",
             "conversations": "conversations.json", "negatives": "negatives.json"}
    with open(out / files["temporal"], "w") as fh:
        for r in recs:
            for t in r["temporal"]:
                fh.write(json.dumps(t) + "\n")
    for key in ("region", "segmentation", "negatives"):
        (out / files[key]).write_text(json.dumps([x for r in recs for x in r[key]]) + "\n")
    (out / files["conversations"]).write_text(json.dumps([r["conversation"] for r in recs], indent=1) + "\n")
    write_patch_labels(out, [r["conversation"]["video"] for r in recs], [r["patch"] for r in recs])
    manifest = {
        "dataset": "tpo-synth", "generator_version": GENERATOR_VERSION, "seed": seed, "split": split,
        "split_salt": SPLIT_SALT[split], "codec": codec, "mask_format": mask_mode, "clip_len_s": CLIP_LEN_S,
        "box_frame": f"sampled frame {REGION_LABEL_FRAMES // 2} of {REGION_LABEL_FRAMES}: "
        f"int({REGION_LABEL_FRAMES // 2 + 0.5} * num_frames / {REGION_LABEL_FRAMES})",
        "files": files, "format_versions": FORMAT_VERSIONS,
        "patch_labels": {"file": PATCH_FILE, "grid": PATCH_GRID, "frames": PATCH_FRAMES, "classes": NUM_PATCH_CLASSES},
        "counts": {"videos": videos, "frames": sum(r["frames"] for r in recs),
                   "temporal": sum(len(r["temporal"]) for r in recs), "region": sum(len(r["region"]) for r in recs),
                   "segmentation": sum(len(r["segmentation"]) for r in recs),
                   "conversations": len(recs), "qa_turns": sum(len(r["conversation"]["conversations"]) // 2
                                                              for r in recs),
                   "negatives": sum(len(r["negatives"]) for r in recs)},
        "generation_seconds": round(elapsed, 3), "workers": workers,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def generate_dataset(out: str | Path, num_videos: int, seed: int, split: str = "train", **kwargs) -> dict:
    """Alias of ``generate`` with ``num_videos`` spelled out (keyword-compatible with callers of the plan)."""
    return generate(out, num_videos, seed, split, **kwargs)


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder (one per split)")
    p.add_argument("--videos", type=int, default=100, help="number of videos (default 100)")
    p.add_argument("--seed", type=int, default=0, help="random seed (recorded in manifest.json)")
    p.add_argument("--split", choices=sorted(SPLIT_SALT), default="train",
                   help="train or val: the same seed gives different videos per split")
    p.add_argument("--workers", type=int, default=0, help="processes (0 = all CPU cores, at most 8)")
    p.add_argument("--masks", choices=MASK_MODES, default="png", help="PNG files, COCO RLE in the json, or both")
    p.add_argument("--overwrite", action="store_true", help="replace a dataset already in --out")
    p.add_argument("--clip-frames", type=int, default=0,
                   help="also decode every video's N sampled frames into DIR/clips_tN (training reads them instead "
                        "of decoding: tpo_core/data/clip_store.py); 0 = no")


def run_synth(args: argparse.Namespace) -> int:
    workers = args.workers or min(8, os.cpu_count() or 1)
    manifest = generate(args.out, args.videos, args.seed, args.split, workers=workers, mask_mode=args.masks,
                        overwrite=args.overwrite)
    secs = manifest["generation_seconds"]
    print(f"wrote {manifest['counts']['videos']} {args.split} videos to {args.out} in {secs:.1f} s "
          f"({manifest['counts']['videos'] / max(secs, 1e-9):.1f} videos/s, {workers} workers): {manifest['counts']}")
    if args.clip_frames:
        from tpo_core.data.clip_store import build_clip_store

        t0 = time.perf_counter()
        folder = build_clip_store(args.out, args.clip_frames, workers)
        print(f"wrote the clip store {folder} in {time.perf_counter() - t0:.1f} s")
    return 0


def add_synth_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``data synth`` on the top-level ``tpo`` subparsers (reusing a ``data`` group if present)."""
    data = subparsers.choices.get("data")
    if data is None:
        data = subparsers.add_parser("data", help="dataset tools")
    group = next((a for a in data._actions if isinstance(a, argparse._SubParsersAction)), None)
    if group is None:
        group = data.add_subparsers(dest="data_command", metavar="{synth,...}")
        group.required = True
    p = group.add_parser("synth", help="write a synthetic video dataset with exact labels for all tasks")
    _add_arguments(p)
    p.set_defaults(func=run_synth)
    return p


def synth_main(argv: list[str] | None = None) -> int:
    """Standalone entry: ``python -m tpo_core.data.synth --out DIR --videos N --seed S``."""
    p = argparse.ArgumentParser(prog="tpo data synth", description=__doc__.splitlines()[0])
    _add_arguments(p)
    args = p.parse_args(argv)
    try:
        return run_synth(args)
    except (ValueError, FileExistsError) as e:  # the message names the problem and the fix
        print(f"tpo data synth: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(synth_main())
