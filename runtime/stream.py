"""Streaming: per-frame results as frames arrive, with bounded memory.

    >>> stream = pipe.stream(0, "Track the person.", cadence=60, window=64, background=True)   # camera 0
    >>> for r in stream:
    ...     print(r.index, r.latency_ms, r.box, r.answer.text if r.answer else "")
    ...     if key_pressed: stream.ask_now()

Model (docs/runtime.md, "Streaming"):

- The prompt (and the box prompts) are checked before the source is opened: a bad prompt is a ValueError, not a
  bad frame at every re-ask.
- Frames come from :func:`runtime.sources.open_source` (file, camera, URL, numpy iterator). A bad frame (None,
  wrong shape/dtype/size, a decode error) yields a :class:`FrameResult` with ``error`` set and is skipped; the
  end of the source ends the iteration; a network stream that stalls raises :class:`SourceError`.
- The last ``window`` good frames live in a preallocated ring ``[window, H, W, 3]`` (H, W fixed by the first
  good frame; a frame of another size is reported as an error, not resized). On CUDA the ring is on the device:
  each frame is uploaded once (the tracker reads the same copy), and a re-ask's window is a device gather instead
  of a host copy of ``num_frames`` full frames (50 MB at 1080p: that copy on the frame loop was what a re-ask cost
  the frame it was started on).
- The LLM is re-asked over the window (``preprocess.num_frames`` frames sampled from it, middle of segment)
  every ``cadence`` good frames (first on the first frame), or on the next frame after :meth:`Stream.ask_now`.
  ``background=False``: the re-ask runs synchronously on that frame (its latency shows in that frame's
  ``latency_ms``; the answer is on that frame). ``background=True``: the window is copied and the re-ask runs on
  one worker thread (``Pipeline.ask`` holds the pipeline's lock; ONNX Runtime sessions run concurrently, the GIL is
  released inside them), per-frame tracking goes on, and the answer is attached to the first frame processed after
  it completed. At most one re-ask is in flight: one that falls due meanwhile starts when it is done (on the
  then-current window). An answer that completes after the last frame is :attr:`Stream.last_answer`.
- Isolation of background re-asks (``isolate=True``, the default): on CUDA the frames run on a high-priority CUDA
  stream and the re-ask on a low-priority one (torch work; ONNX Runtime runs on its own streams), and the pipeline
  waits for its own stream only (``TorchOps.sync``), never for the whole device; while a re-ask is in flight the
  interpreter's GIL switch interval is ``REASK_SWITCH_INTERVAL_S`` instead of 5 ms, so the frame loop, which
  releases the GIL at every engine run and sync, gets it back within 0.2 ms instead of waiting out the worker's
  Python (the decode loop). ``isolate=False`` keeps the interpreter's setting and torch's default stream (for
  comparison: ``benchmarks/stream_latency.py`` measures both).
- The frame gate (``defer_reasks=True``, the default with ``background``; :mod:`runtime.engines.gate`): the re-ask
  does not start engine runs while a frame is being processed; it runs them in the idle time between frames. The
  frame loop closes the gate when a frame starts processing (just before its ``latency_ms`` clock starts) and
  opens it when the frame's result is ready (before it is yielded; also when processing fails), so the gate is open
  while the loop waits for the source and while the consumer handles a result; the frame loop never waits for it.
  The worker thread has the gate installed (thread-local, by the pool's initializer): the request waits for it
  before it starts, and every engine call on that thread (``Engine.run``, ``OrtLLM.append``) waits while it is
  closed, at most ``REASK_MAX_DEFER_S`` per call; then it runs anyway (a source with no idle time cannot starve the
  re-ask), and the rest of that re-ask runs without waiting. The gate does not preempt: a run admitted just before a
  frame starts runs alongside it. :attr:`Stream.gate_stats` counts the waits, their total time and the timeouts; a
  background answer's ``timings_ms["deferred_ms"]`` is the time that re-ask waited (before it started, which its
  ``total_ms`` does not count, and at its engine calls, which it does). :meth:`Stream.close` opens the gate for
  good, so a pending re-ask finishes. ``defer_reasks=False``: no gate (the re-ask's engine runs overlap the
  frames'); ignored without ``background``.
- When an answer routes to the mask head, its SAM2 prompt (re)starts a :class:`MaskTracker` on the frame the
  answer is attached to; every following frame is tracked through the ring-buffer memory bank (constant memory)
  and decoded with the fused ``decode_masks`` at frame resolution.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from runtime.contract.postprocess import boxes_to_normalized
from runtime.engines import gate as _gate
from runtime.mask_decode import decode_masks
from runtime.preprocess import sample_indices
from runtime.results import FrameResult, MaskResult, TPOResult, boxes_from_decoded
from runtime.sources import open_source
from runtime.video_io import MAX_SIDE, STREAM_STALL_TIMEOUT_S, Clip, few_frames_note

REASK_NICE = 10  # the re-ask worker's niceness above the frame loop's (Linux): frames get a busy CPU first
REASK_SWITCH_INTERVAL_S = 2e-4  # the GIL switch interval while a background re-ask is in flight (Python's: 5e-3)
# The longest a background re-ask's engine call waits for the frame gate (defer_reasks). A frame takes a few ms and
# arrives every 33 ms at 30 fps, so a paced source opens the gate long before this; 0.1 s (three frame intervals at
# 30 fps) lets an unusually slow frame finish first, and bounds what a source with no idle time (an unpaced file)
# costs a re-ask: one such wait, after which the rest of that re-ask runs without waiting (runtime.engines.gate).
REASK_MAX_DEFER_S = 0.1


def _init_worker(gate: _gate.FrameGate | None) -> None:
    """The re-ask worker thread's initializer: a lower CPU priority, and ``gate`` as the thread's frame gate (it
    lives as long as the thread: the pool's shutdown ends the thread and its thread-local gate with it)."""
    _lower_priority()
    _gate.install(gate)


def _lower_priority() -> None:
    """Run the calling (re-ask worker) thread at a lower CPU priority than the frame loop, where the OS allows a
    per-thread niceness (Linux); elsewhere, or when refused, nothing changes."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + REASK_NICE))
    except (AttributeError, OSError):
        return


class Stream:
    """Iterator of :class:`FrameResult` over a source. See the module docstring.

    Args:
        pipeline: a :class:`runtime.pipeline.Pipeline`.
        source: file path, camera index, URL, or iterable of uint8 ``[H, W, 3]`` frames.
        prompt: the question re-asked over the window (checked at once: ValueError).
        cadence: re-ask every this many good frames (None or 0: only the first frame and :meth:`ask_now`).
        window: frames kept for re-asks (>= 1).
        fps: timestamps of iterable sources (files/cameras give their own).
        track: track the mask frame by frame when an answer routes to the mask head.
        track_every: track on every N-th good frame only (the others carry no mask); the memory bank then counts
            tracked frames (a slower effective frame rate for SAM2), for sources faster than the device.
        max_frames: stop after this many source frames (None: until the source ends).
        background: run re-asks on a worker thread (frames never wait for the LLM); False: on the frame itself.
        isolate: with ``background``: separate CUDA streams (frames high priority) and a short GIL switch interval
            while a re-ask is in flight (module docstring); False: neither.
        defer_reasks: with ``background``: the frame gate: the re-ask starts no engine run while a frame is being
            processed (it waits for the idle time between frames, at most ``REASK_MAX_DEFER_S`` per engine call;
            counters in :attr:`gate_stats`); False: its engine runs overlap the frames'. Ignored without
            ``background``.
        stall_timeout: network streams: seconds without data before the stream counts as stalled (SourceError).
        reconnect: network streams: reopen a stalled URL up to this many times before giving up.
        ask_kwargs: passed to ``Pipeline.ask`` (max_new_tokens, do_sample, logits_processor, boxes, ...).
    """

    def __init__(self, pipeline, source: Any, prompt: str, cadence: int | None = 30, window: int = 32,
                 fps: float = 30.0, track: bool = True, max_frames: int | None = None, track_every: int = 1,
                 background: bool = False, stall_timeout: float = STREAM_STALL_TIMEOUT_S, reconnect: int = 0,
                 isolate: bool = True, defer_reasks: bool = True, **ask_kwargs):
        if not isinstance(window, int) or window < 1:
            raise ValueError(f"window must be a positive int, got {window!r}")
        if cadence is not None and (not isinstance(cadence, int) or cadence < 0):
            raise ValueError(f"cadence must be None or an int >= 0, got {cadence!r}")
        if not isinstance(track_every, int) or track_every < 1:
            raise ValueError(f"track_every must be a positive int, got {track_every!r}")
        if not isinstance(fps, (int, float)) or not fps > 0:
            raise ValueError(f"fps must be a number > 0, got {fps!r}")
        self._check_request(pipeline, prompt, window, fps, ask_kwargs)
        self.pipe, self.prompt, self.cadence, self.window = pipeline, prompt, cadence or 0, window
        self.fps, self.track, self.max_frames, self.ask_kwargs = fps, track, max_frames, ask_kwargs
        self.track_every = track_every
        self._since_start = 0
        self._frames = open_source(source, fps=fps, stall_timeout_s=stall_timeout, reconnect=reconnect)
        self._ring: np.ndarray | None = None
        self._ring_time = np.zeros(window, np.float64)
        self._count = 0  # good frames seen
        self._ask_flag = True
        self._tracker = pipeline.new_tracker() if (track and pipeline.tracker is not None) else None
        self._tracking = False
        self._closed = False
        # the frame gate (background re-asks wait for the idle time between frames); None: no gate
        self._gate = _gate.FrameGate(REASK_MAX_DEFER_S) if (background and defer_reasks) else None
        self._pool = (ThreadPoolExecutor(1, thread_name_prefix="tpo-reask", initializer=_init_worker,
                                        initargs=(self._gate,))
                      if background else None)
        self._pending: tuple[Future, int] | None = None  # the re-ask in flight and the frame it was asked on
        self._isolate = bool(background and isolate)
        self._streams = _cuda_streams(pipeline) if self._isolate else None  # (frame stream, re-ask stream) or None
        self._saved_switch: float | None = None
        self._due = False  # a re-ask fell due while one was in flight
        self.last_answer: TPOResult | None = None

    @staticmethod
    def _check_request(pipeline, prompt: str, window: int, fps: float, ask_kwargs: dict) -> None:
        """The prompt guard and the box format, before the first frame (a bad prompt is not a bad frame)."""
        boxes = ask_kwargs.get("boxes")
        n_boxes = 0
        if boxes is not None:
            n_boxes = len(boxes_to_normalized(boxes, float("inf"), float("inf")))  # format only; sizes at ask time
        times = np.full(pipeline.num_frames, window / fps)  # the latest a window-relative time can be
        pipeline.check_prompt(prompt, num_boxes=n_boxes, max_new_tokens=ask_kwargs.get("max_new_tokens"),
                              times_s=times)

    # ------------------------------------------------------------------------------------------ control
    def ask_now(self) -> None:
        """Re-ask the LLM on the next good frame."""
        self._ask_flag = True

    def close(self) -> None:
        """Stop: close the source, wait for a re-ask in flight (kept as :attr:`last_answer`), end the worker."""
        if self._closed:
            return
        self._closed = True
        if self._gate is not None:
            self._gate.release()  # a pending re-ask finishes without waiting for frames that will not come
        close = getattr(self._frames, "close", None)
        if close is not None:
            close()
        if self._pool is not None:
            if self._pending is not None:
                self._take(*self._pending, None)
                self._pending = None
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._reask_in_flight(False)

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def gate_stats(self) -> dict:
        """The frame gate's counters: ``enabled``; ``checks``: times a re-ask asked the gate (at its start and before
        each engine call); ``waits``: checks that found a frame in progress and waited; ``wait_ms``: their total;
        ``timeouts``: waits that ran out after ``REASK_MAX_DEFER_S`` (the call then ran during a frame);
        ``bypassed``: calls of a re-ask that had timed out, run without waiting. All 0 when there is no gate
        (``defer_reasks=False`` or no ``background``)."""
        if self._gate is None:
            return {"enabled": False, "checks": 0, "waits": 0, "wait_ms": 0.0, "timeouts": 0, "bypassed": 0}
        return {"enabled": True, **self._gate.stats()}

    @property
    def memory_bytes(self) -> int:
        """Bytes held by the frame ring and the mask memory bank (constant once the first frame arrived)."""
        ring = 0 if self._ring is None else self._ring.nbytes
        return ring + (self._tracker.bank.nbytes if self._tracker is not None else 0)

    # ------------------------------------------------------------------------------------------ iterate
    def __iter__(self) -> Iterator[FrameResult]:
        seen = 0
        try:
            for sf in self._frames:
                if self._closed or (self.max_frames is not None and seen >= self.max_frames):
                    break
                seen += 1
                if self._gate is not None:
                    self._gate.close()  # a frame is being processed: the re-ask starts no engine run until it is done
                t0 = time.perf_counter()  # after close(): the whole latency_ms interval is inside the closed gate
                try:
                    result = self._frame(sf)
                    result.latency_ms = (time.perf_counter() - t0) * 1e3
                finally:
                    if self._gate is not None:
                        self._gate.open()  # idle until the next frame (the consumer's and the source's time)
                yield result
        finally:
            self.close()

    def _frame(self, sf: Any) -> FrameResult:
        """One source frame -> its result (a bad frame or an engine failure on it: ``error`` set)."""
        err = sf.error or self._check(sf.frame)
        if err is not None:
            return FrameResult(index=sf.index, timestamp=sf.timestamp, error=err)
        if self._ring is None and self.ask_kwargs.get("boxes") is not None:  # box prompts vs the frame size
            boxes_to_normalized(self.ask_kwargs["boxes"], sf.frame.shape[1], sf.frame.shape[0])
        try:
            with self._frame_stream():
                return self._process(sf.index, sf.timestamp, sf.frame)
        except (ValueError, RuntimeError) as e:  # an engine failure on one frame is reported, not fatal
            return FrameResult(index=sf.index, timestamp=sf.timestamp, error=f"{type(e).__name__}: {e}")

    def _check(self, frame: Any) -> str | None:
        if frame is None:
            return "dropped frame (None)"
        if not isinstance(frame, np.ndarray):
            return f"bad frame: a {type(frame).__name__}, expected a uint8 [H, W, 3] numpy array"
        if frame.ndim != 3 or frame.shape[-1] != 3 or min(frame.shape[:2]) == 0:
            return f"bad frame: shape {frame.shape}, expected [H, W, 3]"
        if frame.dtype != np.uint8:
            return f"bad frame: dtype {frame.dtype}, expected uint8"
        if max(frame.shape[:2]) > MAX_SIDE:
            return f"bad frame: {frame.shape[1]}x{frame.shape[0]} exceeds the {MAX_SIDE} px limit per side"
        if self._ring is not None and frame.shape != self._ring.shape[1:]:
            return f"bad frame: shape {frame.shape} differs from the stream's {self._ring.shape[1:]}"
        return None

    def _process(self, index: int, ts: float, frame: np.ndarray) -> FrameResult:
        torch = getattr(self.pipe.ops, "torch", None)
        if self._ring is None:
            self._ring = (np.zeros((self.window, *frame.shape), np.uint8) if torch is None else
                          torch.empty((self.window, *frame.shape), dtype=torch.uint8, device=self.pipe.device))
        slot = self._count % self.window
        if torch is None:
            self._ring[slot] = frame
        else:  # one upload per frame (on the frame stream when isolated); the tracker reads this copy too
            self._ring[slot].copy_(torch.from_numpy(np.ascontiguousarray(frame)))
        self._ring_time[slot] = ts
        self._count += 1
        out = FrameResult(index=index, timestamp=ts)
        due = self._ask_flag or bool(self.cadence and (self._count - 1) % self.cadence == 0)
        self._ask_flag = False
        if self._pool is None:
            if due:
                t0 = time.perf_counter()
                self._attach(self._ask(self._window_clip()), index, out)
                out.timings_ms["ask_ms"] = (time.perf_counter() - t0) * 1e3
        else:
            self._background(due, index, out)
        if self._tracking:
            if self._since_start % self.track_every == 0:
                self._track(frame if torch is None else self._ring[slot], out)
            self._since_start += 1
        return out

    def _frame_stream(self):
        """The frame loop's CUDA stream (high priority) as torch's current stream, when isolated on CUDA."""
        if self._streams is None:
            return contextlib.nullcontext()
        return self._streams[0].torch.cuda.stream(self._streams[0])

    def _reask_in_flight(self, busy: bool) -> None:
        """The short GIL switch interval while a background re-ask runs (isolated streams only); restored after."""
        if not self._isolate:
            return
        if busy and self._saved_switch is None:
            self._saved_switch = sys.getswitchinterval()
            sys.setswitchinterval(REASK_SWITCH_INTERVAL_S)
        elif not busy and self._saved_switch is not None:
            sys.setswitchinterval(self._saved_switch)
            self._saved_switch = None

    def _background(self, due: bool, index: int, out: FrameResult) -> None:
        """Attach a re-ask that completed; start one that is due (never waits for the LLM)."""
        if self._pending is not None and self._pending[0].done():
            self._take(*self._pending, out)
            self._pending = None
            self._reask_in_flight(False)
        self._due = self._due or due
        if self._due and self._pending is None:
            self._due = False
            self._reask_in_flight(True)
            self._pending = (self._pool.submit(self._ask_background, self._window_clip()), index)  # window copied

    def _take(self, future: Future, asked_at: int, out: FrameResult | None) -> None:
        """A finished background re-ask -> ``out`` (or only :attr:`last_answer` when no frame is left)."""
        try:
            answer = future.result()
        except (ValueError, RuntimeError) as e:
            if out is not None:
                out.answer_error, out.asked_at = f"{type(e).__name__}: {e}", asked_at
            return
        if out is None:
            return
        self._attach(answer, asked_at, out)
        out.timings_ms["ask_ms"] = answer.timings_ms.get("total_ms", 0.0)

    def _attach(self, answer: TPOResult, asked_at: int, out: FrameResult) -> None:
        out.answer, out.asked_at = answer, asked_at
        if answer.mask_prompt is not None and self._tracker is not None:
            self._tracker.start(answer.mask_prompt)
            self._tracking, self._since_start = True, 0

    def _window_clip(self) -> Any:
        """The sampled frames of the window: a host :class:`Clip` (a copy), or on CUDA a ``DeviceClip`` gathered on
        the device (the frames are copied on the frame loop's stream, so later ring writes cannot reach them)."""
        n = min(self._count, self.window)
        order = [(self._count - n + i) % self.window for i in range(n)]  # chronological ring slots
        idx = sample_indices(n, self.pipe.num_frames)
        slots = [order[i] for i in idx]
        times = self._ring_time[slots]
        t_first = self._ring_time[order[0]]
        dt = 1.0 / self.fps if self.fps > 0 else 0.0
        duration = max(float(self._ring_time[order[-1]] - t_first) + dt, 1e-3)
        h, w = (int(v) for v in self._ring.shape[1:3])
        few = few_frames_note(n, self.pipe.num_frames)
        notes = [few.replace("the video has", "the window holds")] if few else []
        if isinstance(self._ring, np.ndarray):
            return Clip(frames=self._ring[slots], timestamps=times - t_first, duration=duration, width=w, height=h,
                        fps=self.fps, notes=notes)
        from runtime.video_gpu import DeviceClip

        torch = self.pipe.ops.torch
        frames = self._ring[torch.as_tensor(slots, device=self._ring.device)]
        return DeviceClip(frames=frames, indices=np.asarray(slots, np.int64), timestamps=times - t_first,
                          duration=duration, width=w, height=h, fps=self.fps, path="", decoder="stream",
                          notes=notes)

    def _ask(self, clip: Clip) -> TPOResult:
        res = self.pipe.ask(clip, self.prompt, track_mask=False, **self.ask_kwargs)
        self.last_answer = res
        return res

    def _ask_background(self, clip: Clip) -> TPOResult:
        """The worker's re-ask: it starts in the idle time between frames when gated (its engine calls wait on the
        gate too), with the time it waited as ``timings_ms["deferred_ms"]``."""
        gate = self._gate
        if gate is None:
            return self._ask_isolated(clip)
        gate.begin_request()
        gate.wait()  # the request's host work and device preprocessing start between frames too
        res = self._ask_isolated(clip)
        res.timings_ms["deferred_ms"] = gate.request_wait_s * 1e3
        return res

    def _ask_isolated(self, clip: Clip) -> TPOResult:
        """The worker's re-ask, on the low-priority CUDA stream when isolated; its work is finished on return (the
        frame loop then reads the answer's device tensors, the mask prompt, from its own stream)."""
        if self._streams is None:
            return self._ask(clip)
        frame_stream, stream = self._streams
        stream.wait_stream(frame_stream)  # the window's gather (enqueued on the frame stream) comes first
        if hasattr(clip.frames, "record_stream"):
            clip.frames.record_stream(stream)  # allocated on the frame stream, read on this one
        with stream.torch.cuda.stream(stream):
            res = self._ask(clip)
        stream.synchronize()
        return res

    def _track(self, frame: Any, out: FrameResult) -> None:
        """``frame`` uint8 ``[H, W, 3]``: the host frame, or its device copy in the ring (CUDA)."""
        t0 = time.perf_counter()
        pipe, tracker = self.pipe, self._tracker
        pixels = pipe.ops.asarray(pipe.mask_pixels(frame[None]), pipe._input_dtype("mask_image_encoder", "pixels"))
        fm = tracker.step(tracker.encode_images(pixels)[0], write_memory=True)
        pipe.ops.sync()
        out.timings_ms["track_ms"] = (time.perf_counter() - t0) * 1e3
        t0 = time.perf_counter()
        h, w = frame.shape[:2]
        # the score logit goes to the fused decode on the device; one read-back at the end (to_numpy)
        dec = decode_masks(fm.low_res_logits, (h, w), pipe.ops.cast(fm.score_logits, "float32")).to_numpy()
        out.timings_ms["mask_decode_ms"] = (time.perf_counter() - t0) * 1e3
        score = fm.object_score
        boxes = boxes_from_decoded(dec.boxes)
        out.mask = MaskResult(bits=dec.bits, height=h, width=w, timestamps=np.asarray([out.timestamp], np.float32),
                              object_scores=np.asarray([score], np.float32), boxes=boxes, areas=dec.areas)
        out.box, out.object_score = boxes[0], score


def _cuda_streams(pipeline) -> tuple[Any, Any] | None:
    """(frame stream, re-ask stream) on the pipeline's CUDA device: the frames' at the highest priority, the
    re-ask's at the lowest (CUDA schedules the blocks of a high-priority stream first); None off CUDA. Each has a
    ``torch`` attribute (this module does not import torch)."""
    torch = getattr(pipeline.ops, "torch", None)
    if torch is None or not str(pipeline.device).startswith("cuda"):
        return None
    dev = torch.device(pipeline.device)
    # torch maps a priority outside the device's range to the nearest valid one; 0 is CUDA's lowest
    frame, reask = torch.cuda.Stream(dev, priority=-100), torch.cuda.Stream(dev, priority=0)
    frame.torch = reask.torch = torch
    return frame, reask
