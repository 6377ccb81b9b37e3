"""Video frames straight into GPU memory: NVDEC through PyNvVideoCodec, with decord / PyAV as the fallback.

:func:`read_clip_cuda` has :func:`runtime.video_io.read_clip`'s contract (same file checks and errors, the same
middle-of-segment frame indices, timestamps ``index / fps``, duration ``n / fps``, the source's width/height,
the > ``MAX_SIDE`` downscale policy) but returns a :class:`DeviceClip` whose ``frames`` are a uint8 torch tensor
on the device, and which says which decoder ran (``decoder``) and why a fallback was taken (``notes``).

Decoders, in the order ``decoder="auto"`` tries them:

- ``nvdec``: PyNvVideoCodec's ``SimpleDecoder`` (pip ``pynvvideocodec``, 2.2.x) decodes on the GPU's NVDEC
  engines and converts to RGB in device memory (``OutputColorType.RGB`` -> ``[H, W, 3]``, or ``RGBP`` ->
  planar ``[3, H, W]`` for ``layout="tchw"``). Frames are reached in one of three ways (``strategy``):
  ``sequential`` decodes from frame 0 in order and keeps the sampled frames; ``index`` hands the sorted indices
  to ``get_batch_frames_by_index``; ``gop`` walks the sorted indices, decoding forward when no keyframe lies
  after the next frame due and up to the next index, and seeking otherwise (fewest frames decoded).
  ``auto`` counts the frames each of ``sequential`` and ``gop`` would decode from the keyframe list and picks
  the smaller (``sequential`` on a tie: no seek).
- ``decord`` (CPU, :func:`runtime.video_io.read_clip`) then one host-to-device copy; ``pyav`` (CPU, sequential
  decode) when decord is not installed. Colours differ from NVDEC's by the YUV->RGB conversion (a few levels).

The NVDEC decoder owns its output surfaces until the next decode call, so every kept frame is copied into the
clip's own tensor (6 MB per 1080p frame, microseconds) with a device synchronization on both sides of the copy:
the decoder may run on its own stream.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runtime.preprocess import sample_indices
from runtime.video_io import (
    MAX_SIDE,
    Clip,
    VideoReadError,
    check_video_file,
    codec_name,
    first_line,
    read_clip,
    read_clip_pyav,
)

DECODERS = ("auto", "nvdec", "decord", "pyav")
NVDEC_CODECS = ("h264", "hevc", "av1", "vp9")  # what PyNvVideoCodec's SimpleDecoder is given (others fall back)
STRATEGIES = ("auto", "sequential", "index", "gop")
LAYOUTS = ("thwc", "tchw")
SEQ_BATCH = 16  # frames per get_batch_frames call when decoding forward (16 x 6 MB surfaces at 1080p)


@dataclass
class DeviceClip:
    """Sampled frames of one video, on a device.

    frames: uint8 torch tensor ``[T, h, w, 3]`` (``layout="thwc"``, RGB interleaved, as ``Clip.frames``) or
    ``[T, 3, h, w]`` (``"tchw"``, planar); ``indices``: int64 ``[T]`` source frame numbers; ``timestamps``:
    float64 ``[T]`` seconds (``indices / fps``); width/height: the source's size; duration: seconds;
    decoder: ``nvdec`` | ``decord`` | ``pyav``; strategy: how NVDEC reached the frames (``""`` for the CPU
    decoders); frames_decoded: frames NVDEC decoded by the keyframe model (``sequential``: last index + 1;
    ``gop``: forward runs and keyframe-to-index runs; 0 for ``index``, whose access the library decides);
    timings_ms: ``decode`` (to device memory, synchronized) and ``upload`` (host-to-device copy, CPU decoders).
    """

    frames: Any
    indices: np.ndarray
    timestamps: np.ndarray
    duration: float
    width: int
    height: int
    fps: float
    path: str
    decoder: str
    layout: str = "thwc"
    strategy: str = ""
    frames_decoded: int = 0
    notes: list[str] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)

    def to_clip(self) -> Clip:
        """A host :class:`runtime.video_io.Clip` (frames copied back as uint8 ``[T, h, w, 3]``)."""
        f = self.frames if self.layout == "thwc" else self.frames.permute(0, 2, 3, 1)
        return Clip(frames=np.ascontiguousarray(f.cpu().numpy()), timestamps=self.timestamps.copy(),
                    duration=self.duration, width=self.width, height=self.height, fps=self.fps, path=self.path,
                    notes=list(self.notes))


def nvdec_available() -> tuple[bool, str]:
    """(True, version) when PyNvVideoCodec imports (driver with NVDEC present), else (False, the reason)."""
    try:
        import PyNvVideoCodec as nvc
    except ImportError as e:
        return False, f"PyNvVideoCodec is not installed ({first_line(e)}); pip install pynvvideocodec==2.2.4"
    except (RuntimeError, OSError) as e:  # its import checks the driver and raises RuntimeError without one
        return False, f"PyNvVideoCodec cannot start ({first_line(e)})"
    return True, str(getattr(nvc, "__version__", "?"))


def read_clip_cuda(path: str | Path, num_frames: int, device: Any = "cuda", *, decoder: str = "decord",
                   strategy: str = "auto", layout: str = "thwc", max_side: int = MAX_SIDE) -> DeviceClip:
    """Read ``num_frames`` middle-of-segment frames of a video file into device memory (see the module docstring).

    Args:
        device: a CUDA device (``"cuda"``, ``"cuda:1"``, a ``torch.device``); ``"cpu"`` runs the CPU decoders only.
        decoder: ``decord`` (default: CPU decode + one upload), ``auto`` (NVDEC when available, else decord, else
            PyAV) or ``nvdec`` / ``pyav`` explicitly (no fallback). NVDEC is opt-in: PyNvVideoCodec 2.2.4's
            SimpleDecoder segfaulted (killing the process) on some H.264 test clips on the H200, not diagnosed.
        strategy: NVDEC frame access, ``auto`` | ``sequential`` | ``index`` | ``gop``.
        layout: ``thwc`` (``[T, h, w, 3]``) or ``tchw`` (``[T, 3, h, w]``).
    Raises:
        VideoReadError (a ValueError) for unreadable files, as ``read_clip``; ValueError for bad arguments.
    """
    import torch

    for name, value, allowed in (("decoder", decoder, DECODERS), ("strategy", strategy, STRATEGIES),
                                 ("layout", layout, LAYOUTS)):
        if value not in allowed:
            raise ValueError(f"read_clip_cuda: {name}={value!r} is not allowed; choose one of {allowed}")
    dev = torch.device(device)
    if decoder == "nvdec" and dev.type != "cuda":
        raise ValueError(f"decoder='nvdec' decodes into GPU memory; pass device='cuda', got {dev}")
    p = Path(path)
    check_video_file(p)
    sample_indices(1, num_frames)  # validates num_frames
    notes: list[str] = []
    if decoder in ("auto", "nvdec") and dev.type == "cuda":
        ok, why = nvdec_available()
        codec = codec_name(p)
        if ok and codec not in NVDEC_CODECS:  # the codecs NVDEC decodes on Hopper; others go to the CPU decoders
            ok, why = False, f"codec {codec!r} is not one NVDEC decodes here ({', '.join(NVDEC_CODECS)})"
        if ok:
            try:
                return _read_nvdec(p, num_frames, dev, strategy, layout, max_side)
            except _FallBack as e:
                if decoder == "nvdec":
                    raise VideoReadError(f"video {p}: NVDEC cannot decode it ({e}); use decoder='auto' to fall "
                                         "back to the CPU decoders") from e
                notes.append(f"NVDEC not used: {e}; decoded on the CPU")
        elif decoder == "nvdec":
            raise ValueError(f"decoder='nvdec' needs PyNvVideoCodec: {why}")
        else:
            notes.append(f"NVDEC not used: {why}; decoded on the CPU")
    cpu = decoder if decoder in ("decord", "pyav") else ("decord" if _has("decord") else "pyav")
    return _read_cpu(p, num_frames, dev, cpu, layout, max_side, notes)


# ------------------------------------------------------------------------------------------------ NVDEC
class _FallBack(Exception):
    """NVDEC could not handle this file (unsupported codec/size, decoder error); the CPU decoders may."""


def _nvc_errors(nvc) -> tuple[type, ...]:
    own = tuple(v for v in vars(nvc).values() if isinstance(v, type) and issubclass(v, Exception))
    return (*own, RuntimeError, ValueError, IndexError, OSError)


def _open_nvdec(nvc, path: Path, dev, layout: str, scan: bool):
    """SimpleDecoder on ``dev`` (its primary context); ``scan``: index the packets for the keyframe list."""
    color = nvc.OutputColorType.RGB if layout == "thwc" else nvc.OutputColorType.RGBP
    try:
        return nvc.SimpleDecoder(str(path), gpu_id=dev.index or 0, use_device_memory=True,
                                 need_scanned_stream_metadata=scan, output_color_type=color)
    except Exception as e:  # noqa: BLE001 -- SimpleDecoder raises plain Exception for streams it cannot open
        raise _FallBack(f"SimpleDecoder refused the file: {first_line(e)}") from e


def _read_nvdec(path: Path, num_frames: int, dev, strategy: str, layout: str, max_side: int) -> DeviceClip:
    import torch

    if dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    with torch.cuda.device(dev):  # torch's copies and synchronizations on the decoder's GPU
        return _read_nvdec_on(path, num_frames, dev, strategy, layout, max_side)


def _read_nvdec_on(path: Path, num_frames: int, dev, strategy: str, layout: str, max_side: int) -> DeviceClip:
    import PyNvVideoCodec as nvc
    import torch

    t0 = time.perf_counter()
    dec = _open_nvdec(nvc, path, dev, layout, scan=strategy in ("auto", "gop"))
    errors = _nvc_errors(nvc)
    try:
        meta = dec.get_stream_metadata()
        n, width, height, fps = len(dec), int(meta.width), int(meta.height), float(meta.average_fps)
        keyframes = _keyframes(dec, errors) if strategy in ("auto", "gop") else []
    except errors as e:
        raise _FallBack(f"no stream metadata: {first_line(e)}") from e
    if max(width, height) > max_side:
        raise _FallBack(f"the video is {width}x{height}, above the {max_side} px limit; the CPU decoders downscale")
    if n <= 0 or not np.isfinite(fps) or fps <= 0:
        raise _FallBack(f"the container reports {n} frames at {fps} fps")
    idx = sample_indices(n, num_frames)
    targets = sorted({int(i) for i in idx})
    if strategy == "auto":  # unknown keyframes: let the library choose its own access pattern
        seq, gop = int(targets[-1]) + 1, _gop_cost(targets, keyframes)
        strategy = "index" if not keyframes else ("sequential" if seq <= gop else "gop")
    shape = (len(idx), height, width, 3) if layout == "thwc" else (len(idx), 3, height, width)
    out = torch.empty(shape, dtype=torch.uint8, device=dev)
    slots: dict[int, list[int]] = {}
    for k, i in enumerate(idx):
        slots.setdefault(int(i), []).append(k)

    def take(index: int, frame) -> None:
        t = torch.from_dlpack(frame)
        t = t.reshape(shape[1:]) if t.numel() == int(np.prod(shape[1:])) else t
        if tuple(t.shape) != shape[1:] or t.dtype != torch.uint8:
            raise _FallBack(f"NVDEC returned a frame of {tuple(t.shape)} {t.dtype}, expected {shape[1:]} uint8")
        for k in slots[index]:
            out[k].copy_(t)

    try:
        decoded = _DRIVE[strategy](dec, targets, keyframes, take)
    except errors as e:
        raise _FallBack(f"decoding failed ({first_line(e)})") from e
    torch.cuda.synchronize(dev)
    ms = (time.perf_counter() - t0) * 1e3
    return DeviceClip(frames=out, indices=idx, timestamps=idx / fps, duration=n / fps, width=width, height=height,
                      fps=fps, path=str(path), decoder="nvdec", layout=layout, strategy=strategy,
                      frames_decoded=decoded, timings_ms={"decode": ms, "upload": 0.0})


def _keyframes(dec, errors) -> list[int]:
    try:
        return sorted(int(k) for k in dec.get_scanned_stream_metadata().key_frame_indices)
    except errors:
        return []  # unknown: every index counts as behind a keyframe (gop seeks each time)


def _gop_cost(targets: list[int], keyframes: list[int]) -> int:
    """Frames the ``gop`` walk decodes: forward if no keyframe lies in (pos + 1, target], else from the keyframe."""
    pos, total = -1, 0  # pos: last decoded frame
    for t in targets:
        k = _key_at_or_before(keyframes, t)
        start = pos + 1 if (pos >= 0 and k <= pos + 1) else k
        total += t - start + 1
        pos = t
    return total


def _key_at_or_before(keyframes: list[int], t: int) -> int:
    """The last keyframe <= t (t itself when the list is empty: unknown keyframes cost one seek per index)."""
    if not keyframes:
        return t
    j = int(np.searchsorted(keyframes, t, side="right")) - 1
    return keyframes[j] if j >= 0 else 0


def _sync() -> None:
    import torch

    torch.cuda.synchronize()


def _take_batch(frames: list, first: int, wanted: set[int], take) -> None:
    """Copy the wanted frames of one decoder call out of its surfaces, then wait for the copies.

    The device-wide syncs order the decoder's own stream (post-processing into the surfaces) before our copies,
    and our copies before the surfaces are reused by the next call / released when ``frames`` is dropped.
    """
    _sync()
    for i, frame in enumerate(frames, first):
        if i in wanted:
            take(i, frame)
    _sync()


def _forward(dec, start: int, stop: int, wanted: set[int], take) -> None:
    """Decode frames start..stop (inclusive) in order from the decoder's position; take the wanted ones."""
    i = start
    while i <= stop:
        batch = dec.get_batch_frames(min(SEQ_BATCH, stop - i + 1))
        if not batch:
            raise _FallBack(f"the stream ended at frame {i}, before frame {stop}")
        _take_batch(batch, i, wanted, take)
        i += len(batch)


def _drive_sequential(dec, targets: list[int], keyframes: list[int], take) -> int:
    dec.seek_to_index(0)
    _forward(dec, 0, targets[-1], set(targets), take)
    return targets[-1] + 1


def _drive_index(dec, targets: list[int], keyframes: list[int], take) -> int:
    frames = dec.get_batch_frames_by_index(list(targets))
    if len(frames) != len(targets):
        raise _FallBack(f"get_batch_frames_by_index returned {len(frames)} frames for {len(targets)} indices")
    _sync()
    for t, frame in zip(targets, frames):
        take(t, frame)
    _sync()
    return 0  # unknown: the library decides what it decodes


def _drive_gop(dec, targets: list[int], keyframes: list[int], take) -> int:
    pos, wanted = -1, set(targets)  # pos: the last frame pulled out of the decoder
    for t in targets:
        if not (pos >= 0 and _key_at_or_before(keyframes, t) <= pos + 1):
            dec.seek_to_index(t)  # the decoder restarts at the keyframe before t; the next frame out is t
            pos = t - 1
        _forward(dec, pos + 1, t, wanted, take)
        pos = t
    return _gop_cost(targets, keyframes)


_DRIVE = {"sequential": _drive_sequential, "index": _drive_index, "gop": _drive_gop}


# -------------------------------------------------------------------------------------------- CPU decoders
def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _read_cpu(path: Path, num_frames: int, dev, which: str, layout: str, max_side: int,
              notes: list[str]) -> DeviceClip:
    import torch

    t0 = time.perf_counter()
    clip = read_clip(path, num_frames, max_side) if which == "decord" else read_clip_pyav(path, num_frames, max_side)
    t1 = time.perf_counter()
    host = torch.from_numpy(clip.frames)
    if layout == "tchw":
        host = host.permute(0, 3, 1, 2)
    frames = host.to(dev).contiguous()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    idx = clip.indices if clip.indices is not None else np.rint(np.asarray(clip.timestamps) * clip.fps)
    idx = np.asarray(idx).astype(np.int64)
    return DeviceClip(frames=frames, indices=idx, timestamps=clip.timestamps, duration=clip.duration,
                      width=clip.width, height=clip.height, fps=clip.fps, path=clip.path, decoder=which,
                      layout=layout, notes=notes + clip.notes,
                      timings_ms={"decode": (t1 - t0) * 1e3, "upload": (time.perf_counter() - t1) * 1e3})
