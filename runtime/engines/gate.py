"""The frame gate: cooperative scheduling of background engine work around a latency-critical loop.

A streaming frame loop (:class:`runtime.stream.Stream`) and a background LLM re-ask share the device. The re-ask's
engine runs, launched while a frame is being processed, make that frame slower (the p99 per-frame latency with
re-asks was above the one without). Frames of a live source arrive at the camera rate and take a fraction of the
interval, so the re-ask can run its engine calls in the idle time between frames instead:

- the frame loop calls :meth:`FrameGate.close` when a frame starts processing and :meth:`FrameGate.open` when the
  frame's result is ready (it never waits for the gate);
- the re-ask's thread has the gate installed (:func:`install`, thread-local); every engine launch on that thread
  calls :func:`wait_turn` first (``Engine.run`` right before the backend run, ``OrtLLM.append`` right before the
  session run): while the gate is closed it waits, at most ``max_defer_s`` per call, then runs anyway (a source with
  no idle time, frames back to back, cannot starve the re-ask). After such a timeout the rest of the same request
  (:meth:`FrameGate.begin_request`) runs without waiting: the frames evidently leave no idle time, and waiting on each
  of its ~20 engine calls would only multiply the delay;
- :meth:`FrameGate.release` opens it for good (the stream is closing: a pending re-ask finishes without waiting).

The gate does not preempt: a call admitted just before a frame starts runs alongside that frame (the admission and
the launch are a few Python lines apart; a busy CPU can stall the thread between them).

Threads without a gate (the frame loop, plain ``Pipeline.ask`` callers) pay one thread-local lookup per engine call.
"""

from __future__ import annotations

import threading
import time

_local = threading.local()


class FrameGate:
    """Open/closed flag with a bounded wait and counters (see the module docstring).

    Args:
        max_defer_s: the longest one :meth:`wait` defers an engine call while the gate is closed.

    Counters (:meth:`stats`): ``checks`` engine calls that asked the gate, ``waits`` calls that found it closed and
    waited, ``wait_ms`` the total time waited, ``timeouts`` waits that ran out after ``max_defer_s`` (the call ran
    while a frame was being processed), ``bypassed`` calls that did not wait because an earlier call of the same
    request had timed out.
    """

    def __init__(self, max_defer_s: float):
        if not max_defer_s >= 0:
            raise ValueError(f"max_defer_s must be >= 0, got {max_defer_s!r}")
        self.max_defer_s = float(max_defer_s)
        self._cond = threading.Condition(threading.Lock())
        self._open = True
        self._released = False
        self._bypass = False  # a wait of the current request timed out: the rest of the request does not wait
        self.checks = self.waits = self.timeouts = self.bypassed = 0
        self.wait_s = 0.0
        self.request_wait_s = 0.0  # waited during the current request (begin_request resets it)

    # ------------------------------------------------------------------------------------ the frame loop's side
    def close(self) -> None:
        """A frame starts processing: engine calls of gated threads wait (no-op once released)."""
        with self._cond:
            if not self._released:
                self._open = False

    def open(self) -> None:
        """The frame's result is ready: waiting engine calls go."""
        with self._cond:
            self._open = True
            self._cond.notify_all()

    def release(self) -> None:
        """Open for good (the stream is closing): nothing waits any more, :meth:`close` has no effect."""
        with self._cond:
            self._released = self._open = True
            self._cond.notify_all()

    @property
    def is_open(self) -> bool:
        return self._open

    @property
    def released(self) -> bool:
        return self._released

    # ------------------------------------------------------------------------------------- the worker's side
    def begin_request(self) -> None:
        """A new request starts on the gated thread: its deferral and its timeout bypass start from zero."""
        with self._cond:
            self._bypass, self.request_wait_s = False, 0.0

    def wait(self) -> float:
        """Before an engine call: return at once when the gate is open, else wait until it opens, at most
        ``max_defer_s`` (then the call runs anyway). Returns the seconds waited."""
        with self._cond:
            self.checks += 1
            if self._open:
                return 0.0
            if self._bypass:
                self.bypassed += 1
                return 0.0
            t0 = time.perf_counter()
            deadline = t0 + self.max_defer_s
            while not self._open:  # re-checked after every wake-up: a frame may have closed it again meanwhile
                left = deadline - time.perf_counter()
                if left <= 0:
                    self.timeouts += 1
                    self._bypass = True
                    break
                self._cond.wait(left)
            waited = time.perf_counter() - t0
            self.waits += 1
            self.wait_s += waited
            self.request_wait_s += waited
            return waited

    def stats(self) -> dict:
        """``{"checks", "waits", "wait_ms", "timeouts", "bypassed"}`` so far."""
        with self._cond:
            return {"checks": self.checks, "waits": self.waits, "wait_ms": round(self.wait_s * 1e3, 3),
                    "timeouts": self.timeouts, "bypassed": self.bypassed}


def install(gate: FrameGate | None) -> None:
    """Make ``gate`` the calling thread's gate (None: remove it)."""
    _local.gate = gate


def current() -> FrameGate | None:
    """The calling thread's gate, or None."""
    return getattr(_local, "gate", None)


def wait_turn() -> float:
    """Called before launching engine work: waits on the calling thread's gate, if it has one (seconds waited)."""
    gate = getattr(_local, "gate", None)
    return 0.0 if gate is None else gate.wait()
