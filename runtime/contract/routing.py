"""Decoding with task-token routing, written once for every backend (reference, verifier, runtime).

Contract: decoding is KV-cached and greedy (or top-p). When a ``*_begin`` token ``b`` is chosen, ``b`` is fed
back as usual; then its placeholder is *forced*: the next input is the learnable task embedding
(``box_token`` / ``temporal_token`` / ``track_token``), the final-layer hidden state of that step ``[D]`` goes to
the head (``on_task(head, hidden)``), and decoding continues from that step's logits. Both ids count towards
``max_new_tokens`` and appear in the output ids; the placeholder is only forced while budget is left for it.
Tokens whose role is ``input`` (``<track_box>``, embedded from a box) are never generated: when one is chosen,
the choice is made again with their logits at -inf.

The loop is backend-free: the caller gives ``feed_token(id) -> logits`` and
``feed_embedding(embedding) -> (logits, hidden [D])`` that run one LLM step. ``logits`` is a host float32
``[V]`` numpy array, or a device object with ``numpy() -> [V]`` and ``argmax() -> int`` (so a greedy step reads
back only the token id).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

FORCED_LOGIT_FLOOR = -1e9  # logit given to every other token by force_token


class Sampler:
    """``logits [V] float32 -> id``: greedy, or top-p over ``softmax(logits / temperature)``.

    Top-p draws with torch's ``multinomial`` and a seeded ``torch.Generator`` when torch is installed (the same
    random stream on every backend), else with numpy.
    """

    def __init__(self, do_sample: bool = False, top_p: float = 0.9, temperature: float = 1.0, seed: int = 0):
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.do_sample, self.top_p, self.temperature = do_sample, top_p, temperature
        self._torch_gen = self._rng = None
        if do_sample:
            try:
                import torch

                self._torch_gen = torch.Generator().manual_seed(seed)
            except ImportError:
                self._rng = np.random.default_rng(seed)

    def __call__(self, logits: np.ndarray) -> int:
        if not self.do_sample:
            return int(np.argmax(logits))
        if self._torch_gen is not None:
            return self._torch_sample(logits)
        x = logits.astype(np.float64) / self.temperature
        p = np.exp(x - x.max())
        p /= p.sum()
        order = np.argsort(-p, kind="stable")
        sp = p[order]
        keep = np.cumsum(sp) - sp < self.top_p
        keep[0] = True
        sp = np.where(keep, sp, 0.0)
        return int(order[self._rng.choice(len(sp), p=sp / sp.sum())])

    def _torch_sample(self, logits: np.ndarray) -> int:
        import torch

        probs = torch.softmax(torch.from_numpy(np.asarray(logits, np.float32)) / self.temperature, -1)
        sorted_p, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_p, 0) - sorted_p < self.top_p
        keep[0] = True
        sorted_p = torch.where(keep, sorted_p, torch.zeros_like(sorted_p))
        return int(order[torch.multinomial(sorted_p / sorted_p.sum(), 1, generator=self._torch_gen)])


@dataclass(frozen=True)
class TaskRoute:
    """One ``*_begin`` token: the placeholder id forced after it, its input embedding ``[D]``, the head."""

    begin_id: int
    placeholder_id: int
    embedding: Any
    head: str


@dataclass
class DecodeOutput:
    token_ids: list[int]
    tasks: list[str] = field(default_factory=list)  # heads run, in order
    steps: int = 0  # LLM steps run after the prefill (placeholder steps included)
    timings_ms: dict[str, float] = field(default_factory=dict)  # decode_ms (heads excluded), head_<name>_ms


def host_logits(logits: Any) -> np.ndarray:
    """Host float32 ``[V]`` of a logits value (numpy array or device logits object)."""
    if isinstance(logits, np.ndarray):
        return logits.astype(np.float32, copy=False).reshape(-1)
    return np.asarray(logits.numpy(), np.float32).reshape(-1)


def force_token(token_id: int, at_step: int = 0):
    """A ``logits_processor`` forcing ``token_id`` at decode step ``at_step`` (constrained decoding)."""

    def processor(step: int, logits):
        if step != at_step:
            return logits
        logits = logits.clone() if hasattr(logits, "clone") else logits.copy()
        logits[:] = FORCED_LOGIT_FLOOR
        logits[token_id] = 0.0
        return logits

    return processor


def _for_processor(logits: np.ndarray):
    """A processor gets a torch tensor when torch is there (the reference hook's type), else numpy."""
    try:
        import torch
    except ImportError:
        return logits.copy()
    return torch.from_numpy(np.array(logits, dtype=np.float32))


def _processed(x) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x.astype(np.float32, copy=False)
    return x.detach().cpu().numpy().astype(np.float32, copy=False)


class Router:
    """Chooses tokens and routes them; one instance per request.

    Args:
        routes: ``*_begin`` id -> :class:`TaskRoute`. stop_ids: ids that end the answer (EOS).
        banned_ids: ids never generated (role ``input``). sampler: a :class:`Sampler`.
        logits_processor: optional ``f(step, logits [V]) -> logits`` applied before each choice.
    """

    def __init__(self, routes: dict[int, TaskRoute], stop_ids, banned_ids=(), sampler: Sampler | None = None,
                 logits_processor: Callable | None = None):
        self.routes, self.stop_ids = dict(routes), {int(i) for i in stop_ids}
        self.banned = np.asarray(sorted(int(i) for i in banned_ids), np.int64)
        self.sampler = sampler or Sampler()
        self.processor = logits_processor

    def choose(self, step: int, logits: Any) -> int:
        """The next id from ``logits`` (see the module docstring for the banned-token rule)."""
        if self.processor is None and not self.sampler.do_sample and not isinstance(logits, np.ndarray):
            tok = int(logits.argmax())  # device argmax: only the id crosses to the host
            if not (self.banned.size and tok in self.banned):
                return tok
        x = host_logits(logits)
        if self.processor is not None:
            x = _processed(self.processor(step, _for_processor(x)))
        tok = self.sampler(x)
        if self.banned.size and tok in self.banned:
            x = x.copy()
            x[self.banned] = -np.inf
            tok = self.sampler(x)
        return tok

    def decode(self, first_logits: Any, max_new_tokens: int, feed_token: Callable[[int], Any],
               feed_embedding: Callable[[Any], tuple[Any, Any]], on_task: Callable[[str, Any], None],
               sync: Callable[[], None] = lambda: None) -> DecodeOutput:
        """Decode from the prefill's logits; ``on_task(head, hidden [D])`` runs each routed head."""
        out = DecodeOutput(token_ids=[])
        logits, head_ms, t0 = first_logits, 0.0, time.perf_counter()
        while len(out.token_ids) < max_new_tokens:
            tok = self.choose(len(out.token_ids), logits)
            out.token_ids.append(tok)
            if tok in self.stop_ids:
                break
            logits = feed_token(tok)
            out.steps += 1
            route = self.routes.get(tok)
            if route is None or len(out.token_ids) >= max_new_tokens:
                continue
            logits, hidden = feed_embedding(route.embedding)
            out.steps += 1
            out.token_ids.append(route.placeholder_id)
            th = time.perf_counter()
            on_task(route.head, hidden)
            sync()
            dt = (time.perf_counter() - th) * 1e3
            key = f"head_{route.head}_ms"
            out.timings_ms[key] = out.timings_ms.get(key, 0.0) + dt
            head_ms += dt
            out.tasks.append(route.head)
        sync()
        out.timings_ms["decode_ms"] = (time.perf_counter() - t0) * 1e3 - head_ms
        return out
