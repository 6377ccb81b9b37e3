"""Scene sampling and rendering for the synthetic video generator (see ``synth.py`` and docs/data.md).

A scene is a static textured background plus 1-4 flat-coloured shapes. Every shape has a unique colour and a
unique shape kind within its video (so "the red circle", "the circle" and "the red shape" all name one
object), a z-order (later objects are drawn on top and occlude earlier ones), a presence interval
``[on, off)`` in frames and an optional linear motion. Shapes are rasterised without anti-aliasing into a
label map ``[H, W]`` (0 = background, k = object k), so each object's visible pixels after occlusion are
exactly ``labels == k`` and the RGB frame is the background with each label's colour painted in.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

# name -> RGB. Object colours are saturated/bright; background colours dark or muted, so never confused.
COLOURS = {
    "red": (230, 30, 30), "green": (40, 200, 50), "blue": (40, 80, 240), "yellow": (240, 230, 40),
    "purple": (160, 50, 210), "orange": (250, 140, 20), "white": (245, 245, 245), "cyan": (30, 220, 230),
}
BACKGROUND_COLOURS = {"black": (25, 25, 25), "gray": (115, 115, 115), "brown": (100, 62, 35),
                      "navy": (25, 32, 90), "olive": (88, 88, 30)}
SHAPES = ("circle", "square", "triangle", "diamond")
TEXTURES = ("noise", "gradient", "stripes")
# (width, height); all even (yuv420p), landscape, square and portrait
SIZES = ((96, 64), (128, 96), (160, 96), (160, 120), (192, 128), (224, 160), (256, 192), (320, 240),
         (128, 128), (64, 96), (96, 128), (120, 160), (144, 192), (240, 320))
FPS_CHOICES = (8, 10, 12, 15, 24, 25, 30)
TIMINGS = ("always", "appears", "disappears", "window")
TEXTURE_AMPLITUDE = 18.0


@dataclass
class ObjectSpec:
    """One shape. Positions are pixel centres; ``size`` is the half-extent (radius) in pixels."""

    obj_id: int  # 1-based; also its label value in the label map
    shape: str
    colour: str
    size: int
    start: tuple[float, float]
    end: tuple[float, float]
    on: int  # first frame present
    off: int  # one past the last frame present
    timing: str

    @property
    def moving(self) -> bool:
        return self.start != self.end

    @property
    def phrase(self) -> str:
        return f"the {self.colour} {self.shape}"

    def centre(self, f: int) -> tuple[int, int]:
        span = max(1, self.off - self.on - 1)
        a = min(max((f - self.on) / span, 0.0), 1.0)
        return (int(round(self.start[0] + a * (self.end[0] - self.start[0]))),
                int(round(self.start[1] + a * (self.end[1] - self.start[1]))))


@dataclass
class SceneSpec:
    vid: str
    width: int
    height: int
    fps: int
    num_frames: int
    texture: str
    background: str  # colour name of the background
    texture_seed: int
    objects: list[ObjectSpec] = field(default_factory=list)

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps


def _timing(rng: np.random.Generator, kind: str, n: int) -> tuple[int, int]:
    min_len = max(2, int(0.15 * n))
    if kind == "always":
        return 0, n
    if kind == "appears":
        return int(rng.uniform(0.1, 0.7) * n), n
    if kind == "disappears":
        return 0, max(min_len, int(rng.uniform(0.3, 0.9) * n))
    on = int(rng.uniform(0.05, 0.6) * n)
    return on, min(n, on + max(min_len, int(rng.uniform(0.2, 0.5) * n)))


def sample_scene(rng: np.random.Generator, vid: str) -> SceneSpec:
    """Draw one scene: size, fps, length, background and objects (all from ``rng``)."""
    width, height = SIZES[rng.integers(len(SIZES))]
    fps = int(FPS_CHOICES[rng.integers(len(FPS_CHOICES))])
    num_frames = max(int(2 * fps), int(round(rng.uniform(2.0, 10.0) * fps)))
    scene = SceneSpec(vid=vid, width=int(width), height=int(height), fps=fps, num_frames=num_frames,
                      texture=str(rng.choice(TEXTURES)), background=str(rng.choice(list(BACKGROUND_COLOURS))),
                      texture_seed=int(rng.integers(2**31)))
    k = int(rng.choice([1, 2, 3, 4], p=[0.2, 0.35, 0.3, 0.15]))
    shapes = rng.permutation(SHAPES)[:k]
    colours = rng.permutation(list(COLOURS))[:k]
    timings = [str(t) for t in rng.choice(TIMINGS, size=k, p=[0.4, 0.2, 0.2, 0.2])]
    if all(t == "always" for t in timings):  # every video has at least one appearance or disappearance
        timings[int(rng.integers(k))] = str(rng.choice(TIMINGS[1:]))
    lo = min(width, height)
    for i in range(k):
        r = int(rng.integers(max(5, lo // 12), max(7, lo // 5) + 1))
        start = _position(rng, width, height, r)
        end = start
        if rng.random() < 0.5:
            end = _position(rng, width, height, r)
            if i > 0 and rng.random() < 0.5:  # pass over an earlier object: occlusion
                other = scene.objects[int(rng.integers(i))].start
                end = (float(np.clip(2 * other[0] - start[0], r, width - 1 - r)),
                       float(np.clip(2 * other[1] - start[1], r, height - 1 - r)))
            if np.hypot(end[0] - start[0], end[1] - start[1]) < 1.5 * r:  # too small to call "moving"
                end = start
        on, off = _timing(rng, timings[i], num_frames)
        scene.objects.append(ObjectSpec(obj_id=i + 1, shape=str(shapes[i]), colour=str(colours[i]), size=r,
                                        start=start, end=end, on=on, off=off, timing=timings[i]))
    return scene


def _position(rng: np.random.Generator, width: int, height: int, r: int) -> tuple[float, float]:
    return float(rng.uniform(r, width - 1 - r)), float(rng.uniform(r, height - 1 - r))


def render_background(scene: SceneSpec) -> np.ndarray:
    """Static textured background, uint8 RGB [H, W, 3]: base colour +- ``TEXTURE_AMPLITUDE``."""
    h, w = scene.height, scene.width
    rng = np.random.default_rng(scene.texture_seed)
    if scene.texture == "noise":
        coarse = rng.uniform(-1, 1, size=(max(2, h // 8), max(2, w // 8))).astype(np.float32)
        t = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_LINEAR)
    else:
        angle = rng.uniform(0, np.pi)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        proj = xx * np.cos(angle) + yy * np.sin(angle)
        if scene.texture == "gradient":
            t = 2 * (proj - proj.min()) / max(float(np.ptp(proj)), 1.0) - 1
        else:
            period = rng.uniform(6, 16)
            t = np.sign(np.sin(2 * np.pi * proj / period)) * 0.7
    base = np.array(BACKGROUND_COLOURS[scene.background], dtype=np.float32)
    return np.clip(base[None, None, :] + TEXTURE_AMPLITUDE * t[..., None], 0, 255).astype(np.uint8)


def draw_shape(canvas: np.ndarray, shape: str, centre: tuple[int, int], r: int, value: int) -> None:
    """Rasterise one filled shape into ``canvas`` [H, W] (uint8) with ``value``; no anti-aliasing."""
    cx, cy = centre
    if shape == "circle":
        cv2.circle(canvas, (cx, cy), r, value, thickness=-1, lineType=cv2.LINE_8)
    elif shape == "square":
        cv2.rectangle(canvas, (cx - r, cy - r), (cx + r, cy + r), value, thickness=-1, lineType=cv2.LINE_8)
    elif shape == "triangle":
        pts = np.array([[cx, cy - r], [cx - r, cy + r], [cx + r, cy + r]], dtype=np.int32)
        cv2.fillPoly(canvas, [pts], value, lineType=cv2.LINE_8)
    elif shape == "diamond":
        pts = np.array([[cx, cy - r], [cx + r, cy], [cx, cy + r], [cx - r, cy]], dtype=np.int32)
        cv2.fillPoly(canvas, [pts], value, lineType=cv2.LINE_8)
    else:
        raise ValueError(f"unknown shape {shape!r}; allowed: {SHAPES}")


def render_labels(scene: SceneSpec) -> np.ndarray:
    """Label maps uint8 [T, H, W]: 0 = background, k = visible pixels of object k (after occlusion)."""
    labels = np.zeros((scene.num_frames, scene.height, scene.width), dtype=np.uint8)
    for f in range(scene.num_frames):
        for obj in scene.objects:  # z-order: later objects on top
            if obj.on <= f < obj.off:
                draw_shape(labels[f], obj.shape, obj.centre(f), obj.size, obj.obj_id)
    return labels


def unoccluded_area(scene: SceneSpec, obj: ObjectSpec, f: int) -> int:
    """Pixels the object would cover at frame ``f`` with nothing in front of it."""
    canvas = np.zeros((scene.height, scene.width), dtype=np.uint8)
    draw_shape(canvas, obj.shape, obj.centre(f), obj.size, 1)
    return int(canvas.sum())


def compose_frame(background: np.ndarray, labels: np.ndarray, scene: SceneSpec) -> np.ndarray:
    """Background [H, W, 3] + label map [H, W] -> uint8 RGB frame [H, W, 3]."""
    frame = background.copy()
    for obj in scene.objects:
        frame[labels == obj.obj_id] = COLOURS[obj.colour]
    return frame
