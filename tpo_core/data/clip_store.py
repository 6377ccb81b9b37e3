"""Decode a dataset's videos once, in parallel, into a clip store that every training process reads.

``build_clip_store(root, num_frames, workers)`` reads each video under ``root/videos`` with ``read_video``
(the model's middle-of-segment frame sampling) and writes ``root/clips_t{T}/``:

- ``frames_<k>.npy``: uint8, the ``[T, H, W, 3]`` frames of the videos of shard k, flattened one after another;
- ``index.json``: per video (path relative to ``root``): shard, offset and shape of its frames, plus the
  ``Clip`` fields (indices, timestamps, fps, frame count, duration, size).

``ClipStore.open(root, num_frames)`` memory-maps the shards (the page cache is shared by all processes on the
machine) and ``get(path)`` returns the same ``Clip`` that ``read_video(path, T)`` returns (tested).
Training (``ClipCache(store=...)``) then decodes nothing: on a many-core machine the store of 3000 synthetic
videos takes seconds to write, where each training process used to decode them all again in its first epoch.
"""

from __future__ import annotations

import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from .video import Clip, read_video

INDEX = "index.json"


def store_dir(root: str | Path, num_frames: int) -> Path:
    return Path(root) / f"clips_t{num_frames}"


def _decode_shard(args: tuple) -> list[dict]:
    root, rels, num_frames, out, shard = args
    entries, arrays, offset = [], [], 0
    for rel in rels:
        clip = read_video(Path(root) / rel, num_frames)
        frames = np.ascontiguousarray(clip.frames, dtype=np.uint8)
        arrays.append(frames.reshape(-1))
        entries.append({"video": rel, "shard": shard, "offset": offset, "shape": list(frames.shape),
                        "indices": clip.indices.tolist(), "timestamps": clip.timestamps.tolist(), "fps": clip.fps,
                        "num_total_frames": clip.num_total_frames, "duration": clip.duration,
                        "height": clip.height, "width": clip.width, "notes": list(clip.notes)})
        offset += frames.size
    flat = np.concatenate(arrays) if arrays else np.zeros(0, np.uint8)
    np.save(Path(out) / f"frames_{shard}.npy", flat)
    return entries


def build_clip_store(root: str | Path, num_frames: int, workers: int = 1) -> Path:
    """Decode every ``root/videos/*`` video into the store (see the module docstring); returns its folder."""
    root = Path(root)
    videos = sorted(p.relative_to(root).as_posix() for p in (root / "videos").glob("*") if p.is_file())
    if not videos:
        raise FileNotFoundError(f"clip store: {root / 'videos'} holds no videos; create the dataset first with "
                                "`tpo data synth --out DIR`")
    if num_frames <= 0:
        raise ValueError(f"clip store: num_frames must be > 0, got {num_frames}")
    out = store_dir(root, num_frames)
    out.mkdir(parents=True, exist_ok=True)
    shards = max(1, min(workers, len(videos)))
    jobs = [(str(root), videos[k::shards], num_frames, str(out), k) for k in range(shards)]
    if shards > 1:
        with ProcessPoolExecutor(max_workers=shards) as pool:
            parts = list(pool.map(_decode_shard, jobs))
    else:
        parts = [_decode_shard(jobs[0])]
    index = {"num_frames": num_frames, "shards": shards, "videos": {e["video"]: e for p in parts for e in p}}
    (out / INDEX).write_text(json.dumps(index) + "\n")
    return out


class ClipStore:
    """Read side of a clip store: ``get(path) -> Clip | None`` (None for a video it does not hold)."""

    def __init__(self, root: Path, folder: Path, index: dict):
        self.root, self.folder = Path(root).resolve(), folder
        self.num_frames = int(index["num_frames"])
        self.videos = index["videos"]
        self._shards: dict[int, np.ndarray] = {}

    @classmethod
    def open(cls, root: str | Path | None, num_frames: int) -> ClipStore | None:
        """The store of ``root`` for ``num_frames`` frames, or None when there is none."""
        if root is None:
            return None
        folder = store_dir(root, num_frames)
        if not (folder / INDEX).is_file():
            return None
        return cls(Path(root), folder, json.loads((folder / INDEX).read_text()))

    def _shard(self, k: int) -> np.ndarray:
        if k not in self._shards:
            self._shards[k] = np.load(self.folder / f"frames_{k}.npy", mmap_mode="r")
        return self._shards[k]

    def get(self, path: str | Path) -> Clip | None:
        try:
            rel = Path(path).resolve().relative_to(self.root).as_posix()
        except ValueError:
            return None
        e = self.videos.get(rel)
        if e is None:
            return None
        n = int(np.prod(e["shape"]))
        frames = np.array(self._shard(e["shard"])[e["offset"]:e["offset"] + n]).reshape(e["shape"])
        return Clip(frames=frames, timestamps=np.asarray(e["timestamps"], dtype=np.float64),
                    duration=float(e["duration"]), width=int(e["width"]), height=int(e["height"]),
                    fps=float(e["fps"]), path=str(path), notes=list(e.get("notes", [])),
                    indices=np.asarray(e["indices"], dtype=np.int64), num_total_frames=int(e["num_total_frames"]))
