"""Human-readable and file outputs of runtime answers: the text block ``tpo run`` prints, and ``results.json`` +
``annotated.mp4`` for ``--out``."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np

from runtime.annotate import write_annotated


def print_result(prompt: str, res, file=None) -> None:
    """Print one :class:`~runtime.results.TPOResult` (answer, box, best span, masks, notes, stage times)."""
    file = file or sys.stdout
    print(f"\nQ: {prompt}\nA: {res.text!r}  tasks={res.tasks}", file=file)
    if res.region is not None:
        print(f"   box (px): {[round(v, 1) for v in res.region.box]}", file=file)
    if res.temporal is not None and res.temporal.best is not None:
        b = res.temporal.best
        print(f"   span: {b.start:.1f}-{b.end:.1f} s (score {b.score:.2f})", file=file)
    if res.mask is not None:
        print(f"   masks: {res.mask.num_frames} frames at {res.mask.width}x{res.mask.height}, areas "
              f"{[int(a) for a in res.mask.areas]}", file=file)
        absent = [int(k) for k in np.flatnonzero(~res.mask.present)]
        if absent:
            where = "any frame" if len(absent) == res.mask.num_frames else f"sampled frame(s) {absent}"
            print(f"   object not found on {where} (mask object score <= 0)", file=file)
    for note in res.notes:
        print(f"   note: {note}", file=file)
    t = res.timings_ms
    print("   ms: " + ", ".join(f"{k[:-3]} {v:.1f}" for k, v in t.items() if k.endswith("_ms")), file=file)


def write_outputs(out: Path, video, clip, prompts: list[str], results: list,
                  max_frames: int | None = None) -> tuple[Path, Path]:
    """``results.json`` and ``annotated.mp4`` (masks, boxes, the best span on a timeline bar; every frame of the
    video, or the first ``max_frames``, said on stderr) into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    data = {"video": str(video), "width": clip.width, "height": clip.height, "duration": clip.duration,
            "results": [{"prompt": p, **r.to_dict()} for p, r in zip(prompts, results)]}
    rpath = out / "results.json"
    rpath.write_text(json.dumps(data, indent=2) + "\n")
    labels = [f"{r.tasks[0] if r.tasks else 'qa'}: {r.text[:24]}" for r in results]
    vpath, written = write_annotated(out / "annotated.mp4", video, clip, results, labels, max_frames=max_frames)
    total = clip.num_total_frames
    if max_frames is not None and total and written < total:
        print(f"note: {vpath} holds the first {written} of the video's {total} frames (the limit asked for)",
              file=sys.stderr)
    return rpath, vpath


def write_result(out: str | Path, stem: str, device: str, record: dict) -> Path:
    """Write a benchmark record as JSON: ``out`` is a ``.json`` file, or a folder (created), which then gets
    ``<stem>_<device>.json`` with the device name made file-safe (``NVIDIA H200`` -> ``NVIDIA_H200``). Returns the
    path."""
    path = Path(out)
    if path.is_dir() or path.suffix != ".json":
        path.mkdir(parents=True, exist_ok=True)
        path = path / f"{stem}_{re.sub(r'[^A-Za-z0-9]+', '_', device).strip('_')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1, default=str) + "\n")
    return path
