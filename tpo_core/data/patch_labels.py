"""Dense patch labels of the synthetic data: what each ViT patch of each sampled frame shows (issue 12).

The tiny preset's video encoder is trained from scratch. Without dense supervision its patch tokens encode the
objects' colour and shape only as far as the heads' and the LM's gradients pull them, and those pass through a
pointer / pooling that averages over patches (docs/training.md, "Losses and weights"; the file format:
docs/data.md, "Patch labels"). ``tpo data synth`` therefore
writes, for every video, the composition of every cell of a ``GRID x GRID`` grid over each of the
``FRAMES`` sampled frames (``video.sample_indices(n, FRAMES)``, the frames a tiny-preset model sees):

``DIR/patch_labels.npz``
    ``videos``   str ``[N]``: the video path relative to DIR (``videos/<vid>.mp4``), as in the annotation files
    ``indices``  int32 ``[N, FRAMES]``: the sampled frame indices the rows describe
    ``cover``    uint8 ``[N, FRAMES, GRID, GRID, 1 + MAX_OBJECTS]``: the fraction (x 255, area-resized from the
                 exact label map) of the cell's pixels showing the background (slot 0) or object k (slot k)
    ``classes``  int16 ``[N, 1 + MAX_OBJECTS]``: the class of each slot: 0 = background (slot 0, and unused
                 object slots), ``patch_class(colour, shape)`` in ``1 .. NUM_CLASSES - 1`` for an object

The model resizes a frame to ``S x S`` without cropping, so cell ``(row, col)`` of the grid over the original
frame is exactly patch ``(row, col)`` of an ``S / P = GRID`` patch grid. The training target of a patch is
the distribution over ``NUM_CLASSES`` classes that its cover gives (``PatchLabels.get`` -> the objective
scatters ``cover`` into ``classes``).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .synth_scene import COLOURS, SHAPES, SceneSpec
from .video import sample_indices

GRID = 8  # the tiny preset: 64 px frames, 8 px patches
FRAMES = 8  # the tiny preset's sampled frames
MAX_OBJECTS = 4  # synth_scene draws 1-4 objects
NUM_CLASSES = 1 + len(COLOURS) * len(SHAPES)  # background + every colour x shape
FILE = "patch_labels.npz"


CLASS_NAMES = tuple(f"{c} {s}" for c in COLOURS for s in SHAPES)  # classes 1 .. NUM_CLASSES - 1, in order


def patch_class(colour: str, shape: str) -> int:
    """Class id of an object (1-based; 0 is the background)."""
    return 1 + list(COLOURS).index(colour) * len(SHAPES) + SHAPES.index(shape)


def class_parts(cls):
    """Object class id(s) (>= 1; an int or an integer array) -> (colour index, shape index), the inverse of
    ``patch_class``."""
    return (cls - 1) // len(SHAPES), (cls - 1) % len(SHAPES)


def class_name(cls: int) -> str:
    """``"background"`` or ``"<colour> <shape>"`` of a class id."""
    if cls == 0:
        return "background"
    c, s = class_parts(int(cls))
    return f"{list(COLOURS)[c]} {SHAPES[s]}"


def scene_patch_labels(scene: SceneSpec, labels: np.ndarray) -> dict:
    """``labels`` uint8 ``[n, H, W]`` (0 = background, k = object k) -> ``{"indices" [FRAMES], "cover"
    [FRAMES, GRID, GRID, 1 + MAX_OBJECTS] uint8, "classes" [1 + MAX_OBJECTS] int16}`` (see the module docstring)."""
    if len(scene.objects) > MAX_OBJECTS:
        raise ValueError(f"patch labels hold at most {MAX_OBJECTS} objects per video, the scene has "
                         f"{len(scene.objects)}")
    idx = sample_indices(scene.num_frames, FRAMES)
    cover = np.zeros((FRAMES, GRID, GRID, 1 + MAX_OBJECTS), np.float32)
    for t, f in enumerate(idx):
        for k in range(1 + MAX_OBJECTS):
            plane = (labels[f] == k).astype(np.float32)
            cover[t, :, :, k] = cv2.resize(plane, (GRID, GRID), interpolation=cv2.INTER_AREA)
    classes = np.zeros(1 + MAX_OBJECTS, np.int16)
    for obj in scene.objects:
        classes[obj.obj_id] = patch_class(obj.colour, obj.shape)
    return {"indices": np.asarray(idx, np.int32), "cover": np.round(cover * 255).astype(np.uint8),
            "classes": classes}


def write_patch_labels(root: str | Path, videos: list[str], per_video: list[dict]) -> Path:
    """Write ``DIR/patch_labels.npz`` from ``scene_patch_labels`` of every video (in ``videos`` order)."""
    path = Path(root) / FILE
    np.savez_compressed(path, videos=np.asarray(videos), indices=np.stack([p["indices"] for p in per_video]),
                        cover=np.stack([p["cover"] for p in per_video]),
                        classes=np.stack([p["classes"] for p in per_video]))
    return path


class PatchLabels:
    """The patch labels of one dataset folder, looked up by absolute video path (what ``TaskSample.video`` is)."""

    def __init__(self, root: Path, videos: np.ndarray, indices: np.ndarray, cover: np.ndarray, classes: np.ndarray):
        self.root = root
        self.rows = {str((root / v).resolve()): i for i, v in enumerate(videos.tolist())}
        self.indices, self.cover, self.classes = indices, cover, classes

    @classmethod
    def open(cls, root: str | Path | None) -> PatchLabels | None:
        """The labels of ``root``, or None when it has none (real data, or a synthetic set of generator < 3)."""
        if root is None or not (Path(root) / FILE).is_file():
            return None
        root = Path(root)
        with np.load(root / FILE) as z:
            return cls(root, z["videos"], z["indices"], z["cover"], z["classes"])

    @property
    def grid(self) -> int:
        return int(self.cover.shape[2])

    @property
    def frames(self) -> int:
        return int(self.cover.shape[1])

    def get(self, video: str, indices) -> tuple[np.ndarray, np.ndarray] | None:
        """``(cover float32 [FRAMES, GRID * GRID, 1 + MAX_OBJECTS] in [0, 1], classes int64 [1 + MAX_OBJECTS])``
        of ``video`` when its labelled frames are exactly ``indices``; None otherwise (not labelled, or another
        frame sampling)."""
        row = self.rows.get(str(Path(video).resolve()))
        if row is None or not np.array_equal(np.asarray(indices), self.indices[row]):
            return None
        c = self.cover[row].astype(np.float32) / 255.0
        c /= np.maximum(c.sum(-1, keepdims=True), 1e-6)  # rounding to uint8: each cell sums to 1 again
        return c.reshape(c.shape[0], -1, c.shape[-1]), self.classes[row].astype(np.int64)
