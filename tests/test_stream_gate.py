"""Issue 10 item 4: the frame gate (``runtime.engines.gate``, ``Stream(..., defer_reasks=True)``). A background
re-ask starts no engine run while a frame is being processed; it runs its engine calls between frames, waits at most
``REASK_MAX_DEFER_S`` per call (a source with no idle time still gets its answer) and is released by ``close()``.

The stream tests run the real tiny export on the CPU and record every ONNX Runtime session run (``run`` and
``run_with_iobinding``, patched on ORT's ``Session`` class) and every gate admission (``FrameGate.wait``) with its
thread and wall-clock interval, and each frame's processing interval from its ``latency_ms``; they check ordering
and containment, not durations."""

from __future__ import annotations

import bisect
import threading
import time

import numpy as np
import pytest

from runtime.engines import gate as gate_mod
from runtime.engines.gate import FrameGate

# ------------------------------------------------------------------------------------------ the gate object


def _in_thread(fn):
    """Run ``fn`` on a new thread; returns (thread, box) where box['value'] / box['error'] receive its outcome."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 -- handed back to the test
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, box


def test_open_gate_passes_at_once_and_counts_the_check():
    g = FrameGate(10.0)
    assert g.is_open and g.wait() == 0.0
    assert g.stats() == {"checks": 1, "waits": 0, "wait_ms": 0.0, "timeouts": 0, "bypassed": 0}
    with pytest.raises(ValueError, match="max_defer_s"):
        FrameGate(-1.0)


def test_closed_gate_waits_until_opened():
    g = FrameGate(30.0)
    g.close()
    assert not g.is_open
    t, box = _in_thread(g.wait)
    time.sleep(0.05)
    assert t.is_alive()  # still waiting: the gate is closed
    with g._cond:  # a wake-up without the gate opening (a spurious or stale notify) must not let it through
        g._cond.notify_all()
    time.sleep(0.05)
    assert t.is_alive()
    g.open()
    t.join(10)
    assert not t.is_alive() and "error" not in box and box["value"] > 0
    s = g.stats()
    assert (s["checks"], s["waits"], s["timeouts"], s["bypassed"]) == (1, 1, 0, 0) and s["wait_ms"] > 0


def test_wait_times_out_then_the_rest_of_the_request_does_not_wait():
    g = FrameGate(0.05)
    g.begin_request()
    g.close()
    waited = g.wait()  # nobody opens it: runs anyway after max_defer_s
    assert waited >= 0.05 * 0.9
    assert g.wait() == 0.0  # same request: bypassed, no second wait
    s = g.stats()
    assert (s["checks"], s["waits"], s["timeouts"], s["bypassed"]) == (2, 1, 1, 1)
    assert g.request_wait_s == pytest.approx(waited)
    g.begin_request()  # a new request waits again
    assert g.request_wait_s == 0.0 and g.wait() >= 0.05 * 0.9
    assert g.stats()["timeouts"] == 2


def test_release_frees_a_waiting_thread_and_keeps_the_gate_open():
    g = FrameGate(30.0)
    g.close()
    t, box = _in_thread(g.wait)
    time.sleep(0.05)
    assert t.is_alive()
    g.release()
    t.join(10)
    assert not t.is_alive() and "error" not in box and g.stats()["timeouts"] == 0
    g.close()  # no effect once released
    assert g.is_open and g.released and g.wait() == 0.0


def test_the_gate_is_thread_local():
    g = FrameGate(0.05)
    g.close()
    assert gate_mod.current() is None
    assert gate_mod.wait_turn() == 0.0  # this thread has no gate: a closed gate elsewhere costs it nothing

    def gated():
        assert gate_mod.current() is None
        gate_mod.install(g)
        try:
            return gate_mod.current() is g, gate_mod.wait_turn()
        finally:
            gate_mod.install(None)

    t, box = _in_thread(gated)
    t.join(10)
    assert "error" not in box
    mine, waited = box["value"]
    assert mine and waited >= 0.05 * 0.9  # that thread waited on it
    assert gate_mod.current() is None and g.stats()["timeouts"] == 1


# ------------------------------------------------------------------------------------ streams on real engines


def _processor(delay_s: float, force: int | None = None, seen: list | None = None):
    """A logits processor: sleeps ``delay_s`` per step (a slower LLM), forces ``force`` at step 0, records the
    calling thread's gate in ``seen`` (it runs on the re-ask's thread)."""
    from runtime.contract.routing import force_token

    forced = None if force is None else force_token(force, 0)

    def processor(step, logits):
        if seen is not None:
            seen.append((threading.get_ident(), gate_mod.current()))
        time.sleep(delay_s)
        return logits if forced is None else forced(step, logits)

    return processor


class _Recorder:
    """What happened when, on the test's clock: every ORT session run (thread id, start, end), every admission by a
    frame gate (thread id, entered ``FrameGate.wait``, left it), the source's hand-out time of each frame and the
    consumer's receipt time of each result."""

    def __init__(self, monkeypatch):
        from onnxruntime.capi.onnxruntime_inference_collection import Session

        self.runs: list[tuple[int, float, float]] = []
        self.admissions: list[tuple[int, float, float]] = []
        self.arrivals: list[float] = []
        self.receipts: list[tuple[float, object]] = []
        self._lock = threading.Lock()
        for name in ("run", "run_with_iobinding"):
            monkeypatch.setattr(Session, name, self._wrap(getattr(Session, name), self.runs))
        monkeypatch.setattr(FrameGate, "wait", self._wrap(FrameGate.wait, self.admissions))

    def _wrap(self, fn, log: list):
        def wrapped(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                t1 = time.perf_counter()
                with self._lock:
                    log.append((threading.get_ident(), t0, t1))

        return wrapped

    def paced(self, frames, gap_s: float):
        for f in frames:
            time.sleep(gap_s)  # idle time between frames, as a camera gives
            self.arrivals.append(time.perf_counter())
            yield f

    def consume(self, stream) -> list:
        for r in stream:
            self.receipts.append((time.perf_counter(), r))
        return [r for _, r in self.receipts]

    def processing(self) -> list[tuple[float, float]]:
        """Per frame, an interval surely inside its processing (inside ``latency_ms``, measured by the stream after
        closing the gate and before opening it): it starts at least ``latency_ms`` before the consumer got the result
        and ends at most ``latency_ms`` after the source handed the frame out."""
        assert len(self.arrivals) == len(self.receipts)
        out = []
        for arrived, (received, r) in zip(self.arrivals, self.receipts):
            lat = r.latency_ms / 1e3
            out.append((received - lat, arrived + lat))
        return out

    def engine_windows(self, main: int) -> list[tuple[float, float]]:
        """Per frame with engine work: [first start, last end] of the frame loop's engine runs; each lies between the
        frame's hand-out and its result's receipt."""
        spans: dict[int, list[float]] = {}
        for tid, t0, t1 in self.runs:
            if tid != main:
                continue
            i = bisect.bisect_right(self.arrivals, t0) - 1
            assert i >= 0 and t1 <= self.receipts[i][0], "a frame loop engine run outside its frame"
            lo, hi = spans.get(i, (t0, t1))
            spans[i] = [min(lo, t0), max(hi, t1)]
        return [tuple(v) for _, v in sorted(spans.items())]

    def worker_runs(self, main: int) -> list[tuple[int, float, float]]:
        return sorted((r for r in self.runs if r[0] != main), key=lambda r: r[1])


def _launched_inside(rec: _Recorder, main: int) -> tuple[list[float], int, int]:
    """(worker run starts that fell inside a frame's engine work, worker runs, frames with engine work)."""
    windows = rec.engine_windows(main)
    starts = [t0 for _, t0, _ in rec.worker_runs(main)]
    inside = [s for s in starts if any(lo < s < hi for lo, hi in windows)]
    return inside, len(starts), len(windows)


def _admitted_inside(rec: _Recorder) -> list[tuple[int, float, float]]:
    """Gate admissions that surely happened while a frame was processed: the whole call of ``FrameGate.wait`` (it
    let the run through somewhere inside it) lies within a frame's processing interval."""
    frames = rec.processing()
    return [a for a in rec.admissions if any(lo <= a[1] and a[2] <= hi for lo, hi in frames)]


def _unadmitted(rec: _Recorder, main: int) -> list[tuple[int, float, float]]:
    """Worker runs with no gate admission of their own: none on their thread since the previous worker run began."""
    out, prev = [], {}
    for run in rec.worker_runs(main):
        tid, t0, _ = run
        lo = prev.get(tid, float("-inf"))
        if not any(a[0] == tid and lo <= a[1] and a[2] <= t0 for a in rec.admissions):
            out.append(run)
        prev[tid] = t0
    return out


def _frames(n: int, seed: int = 0, hw=(48, 64)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *hw, 3), dtype=np.uint8)


def _tracked_stream(pipe, rec: _Recorder, defer: bool, seen: list | None = None):
    """A paced source, every answer forced to the mask head (every frame after the first answer is tracked: the
    frame loop runs four engines per frame), a re-ask every 4 frames over a slowed LLM."""
    tid = pipe.manifest.task_tokens["<track_begin>"].id
    return pipe.stream(rec.paced(_frames(36), 0.02), "Track it.", cadence=4, window=8, max_new_tokens=8,
                       background=True, defer_reasks=defer, logits_processor=_processor(0.005, tid, seen))


@pytest.mark.slow
def test_gated_re_asks_start_no_engine_run_inside_a_frame(pipe, monkeypatch):
    """Every engine run of the re-ask was admitted by the gate, and no admission happened while a frame was being
    processed. (A run admitted just before a frame began may still launch just after: the gate does not preempt, and
    a busy CPU can stall the worker between its admission and the launch; hence admissions, not launches.)"""
    import runtime.stream as stream_mod

    monkeypatch.setattr(stream_mod, "REASK_MAX_DEFER_S", 5.0)  # far above any frame here: no timeout expected
    rec = _Recorder(monkeypatch)
    seen: list = []
    main = threading.get_ident()
    stream = _tracked_stream(pipe, rec, defer=True, seen=seen)
    results = rec.consume(stream)
    stats = stream.gate_stats
    workers = rec.worker_runs(main)
    assert len(rec.engine_windows(main)) >= 10 and len(workers) >= 10  # the check had something to check
    assert not _unadmitted(rec, main)  # every worker run asked the gate first
    assert all(a[0] != main for a in rec.admissions) and len(rec.admissions) == stats["checks"]
    assert stats["enabled"] and stats["waits"] > 0 and stats["timeouts"] == 0, stats  # it did defer, never ran out
    assert not _admitted_inside(rec), (_admitted_inside(rec), stats)
    answered = [r for r in results if r.answer is not None]
    assert len(answered) >= 2 and all(r.asked_at is not None and r.index > r.asked_at for r in answered)
    assert all(r.answer.tasks == ["mask"] for r in answered)
    assert all("deferred_ms" in r.answer.timings_ms for r in answered)
    assert sum(r.answer.timings_ms["deferred_ms"] for r in answered) > 0
    assert seen and all(g is stream._gate for _, g in seen)  # the worker's thread-local gate is the stream's
    assert all(tid != main for tid, _ in seen) and gate_mod.current() is None
    assert stream._gate.released and not [t for t in threading.enumerate() if t.name.startswith("tpo-reask")]


@pytest.mark.slow
def test_ungated_re_asks_overlap_the_frames(pipe, monkeypatch):
    """defer_reasks=False behaves as before: no gate on the worker, and its engine runs do start inside frames (the
    recorder can see an overlap here, so the gated test's checks are not vacuous)."""
    rec = _Recorder(monkeypatch)
    seen: list = []
    main = threading.get_ident()
    stream = _tracked_stream(pipe, rec, defer=False, seen=seen)
    results = rec.consume(stream)
    inside, worker_runs, tracked = _launched_inside(rec, main)
    assert tracked >= 10 and worker_runs >= 10, (tracked, worker_runs)
    assert inside, "no worker run started inside a frame without the gate: the recorder cannot see overlaps"
    assert not rec.admissions and len(_unadmitted(rec, main)) == worker_runs
    assert stream.gate_stats == {"enabled": False, "checks": 0, "waits": 0, "wait_ms": 0.0, "timeouts": 0,
                                 "bypassed": 0}
    assert seen and all(g is None for _, g in seen)
    answered = [r for r in results if r.answer is not None]
    assert len(answered) >= 2 and all(r.index > r.asked_at for r in answered)
    assert all("deferred_ms" not in r.answer.timings_ms for r in answered)


@pytest.mark.slow
def test_a_source_with_no_idle_time_still_gets_its_answer(pipe, monkeypatch):
    """Frames back to back, each slower than REASK_MAX_DEFER_S: the gate is closed almost all the time, the re-ask's
    wait times out (counted) and it runs anyway; the answer arrives on a later frame."""
    import runtime.stream as stream_mod
    from runtime.stream import Stream

    monkeypatch.setattr(stream_mod, "REASK_MAX_DEFER_S", 0.05)
    process = Stream._process

    def slow_process(self, index, ts, frame):
        out = process(self, index, ts, frame)
        time.sleep(0.25)  # inside the frame: the gate stays closed
        return out

    monkeypatch.setattr(Stream, "_process", slow_process)
    stream = pipe.stream(iter(_frames(12, seed=1)), "What is it?", cadence=0, window=4, max_new_tokens=3,
                         background=True)
    results = list(stream)
    stats = stream.gate_stats
    assert stats["timeouts"] >= 1 and stats["waits"] >= 1 and stats["bypassed"] >= 1, stats
    answered = [r for r in results if r.answer is not None]
    assert len(answered) == 1 and answered[0].asked_at == 0 and answered[0].index > 0
    assert answered[0].answer.timings_ms["deferred_ms"] >= 0.05 * 1e3 * 0.9


@pytest.mark.slow
def test_close_releases_a_re_ask_waiting_on_the_gate(pipe, monkeypatch):
    """close() from another thread while a frame is being processed (the gate closed, the re-ask waiting on it with a
    30 s limit) opens the gate for good: the re-ask finishes, close() returns, the worker thread ends."""
    import runtime.stream as stream_mod
    from runtime.stream import Stream

    monkeypatch.setattr(stream_mod, "REASK_MAX_DEFER_S", 30.0)
    process = Stream._process
    closer: dict = {}

    def process_then_close(self, index, ts, frame):
        out = process(self, index, ts, frame)  # frame 0 submits the first re-ask: it waits for this frame to end
        if index == 0:
            deadline = time.perf_counter() + 10
            while self._gate.stats()["checks"] == 0 and time.perf_counter() < deadline:
                time.sleep(0.01)  # until the worker is at the gate (closed: this frame is still being processed)
            time.sleep(0.1)
            closer["waiting"] = self._gate.stats()["checks"] == 1 and not self._pending[0].done()
            t, box = _in_thread(self.close)
            t.join(20)  # far below the 30 s a re-ask would wait if close() did not release the gate
            closer["done"], closer["box"] = not t.is_alive(), box
        return out

    monkeypatch.setattr(Stream, "_process", process_then_close)
    before = {t.name for t in threading.enumerate()}
    stream = pipe.stream(iter(_frames(6, seed=2)), "What is it?", cadence=0, window=4, max_new_tokens=3,
                         background=True)
    results = list(stream)
    assert closer["waiting"] and closer["done"] and "error" not in closer["box"], closer
    assert [r.index for r in results] == [0]  # closed: the loop stopped after the frame in progress
    assert stream.last_answer is not None and stream._gate.released
    assert stream.gate_stats["timeouts"] == 0 and stream.gate_stats["waits"] >= 1
    assert not [t for t in threading.enumerate() if t.name.startswith("tpo-reask") and t.name not in before]
