"""Stateful LLM decoding over the ``llm`` engine, with task-token routing (ORT GenAI ``Generator`` habit).

Routing contract (identical to ``tpo_core.generation``): decoding is KV-cached; when a ``*_begin`` token ``b``
is chosen, ``b`` is fed back as usual, then the matching placeholder is *forced*: the next input is the
learnable task embedding (``box_token`` / ``temporal_token`` / ``track_token`` from the manifest's tensor
files). The final-layer hidden state of that step ``[D]`` goes to the head (``on_task(head, hidden)``) and
decoding continues from that step's logits. Both ids count towards ``max_new_tokens``; the placeholder is
only forced when there is budget left for it.

Tokens that need an *input* (``<track_box>``: role ``input`` in the manifest, embedded from a box by the
``loc_encoder`` graph) are never generated: when one is chosen, the choice is made again with their logits at -inf.
(The reference ``generate`` raises a ValueError there; a runtime must not fail mid-answer. Everywhere else the
choice, and the sampler's random stream, are the reference's.) A generated placeholder
id is embedded with its learnable embedding, as the reference does.

Sampling: greedy (argmax) or nucleus (top-p). Nucleus sampling uses torch's ``multinomial`` with a seeded
``torch.Generator`` when torch is installed (so a seed picks the same tokens as the reference), else numpy.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from runtime.kv_cache import KVCache


class Sampler:
    """``logits [V] float32 -> id``: greedy, or top-p over ``softmax(logits / temperature)``."""

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
        x = logits.astype(np.float64) / max(self.temperature, 1e-5)
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

        probs = torch.softmax(torch.from_numpy(np.asarray(logits, np.float32)) / max(self.temperature, 1e-5), -1)
        sorted_p, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_p, 0) - sorted_p < self.top_p
        keep[0] = True
        sorted_p = torch.where(keep, sorted_p, torch.zeros_like(sorted_p))
        return int(order[torch.multinomial(sorted_p / sorted_p.sum(), 1, generator=self._torch_gen)])


@dataclass
class TaskRoute:
    """One ``*_begin`` token: the placeholder id forced after it, its input embedding ``[D]``, the head."""

    begin_id: int
    placeholder_id: int
    embedding: Any
    head: str


@dataclass
class DecodeOutput:
    token_ids: list[int]
    timings_ms: dict[str, float] = field(default_factory=dict)
    tasks: list[str] = field(default_factory=list)
    steps: int = 0  # LLM decode-graph runs (placeholder steps included)


class Generator:
    """Runs the ``llm`` engine over a :class:`KVCache`.

    Args:
        engine: the opened ``llm`` engine (inputs ``inputs_embeds [1, S, D]``, ``position_ids [1, S]``,
            ``attention_mask [1, P + S]``, ``past_*``; outputs ``logits [1, V]``, ``hidden_states [1, S, D]``,
            ``present_*``).
        cache: the preallocated cache. ``embed_table``: ``[V, D]`` input-embedding table (device array).
        ops: the pipeline's array ops (numpy on the CPU, torch on CUDA).
    """

    def __init__(self, engine, cache: KVCache, embed_table: Any, ops, placeholders: dict[int, Any] | None = None,
                 banned_ids: list[int] | None = None):
        self.engine, self.cache, self.table, self.ops = engine, cache, embed_table, ops
        self.placeholders = dict(placeholders or {})  # placeholder id -> its learnable input embedding [D]
        self.banned_ids = np.asarray(sorted(banned_ids or []), np.int64)

    def reset(self) -> None:
        self.cache.reset()

    def embed_ids(self, ids: list[int]) -> Any:
        """Token ids -> ``[1, len(ids), D]`` rows of the embedding table; a task placeholder id gets its learnable
        embedding instead of its row (as ``TaskLLM.embed`` does)."""
        rows = self.ops.gather_rows(self.table, ids)
        for i, tok in enumerate(ids):
            if tok in self.placeholders:
                rows[i] = self.placeholders[tok]
        return rows[None]

    def append(self, embeds: Any) -> tuple[np.ndarray, Any]:
        """Feed ``embeds [1, S, D]`` after the cached positions -> (host logits ``[V]`` float32, hidden ``[S, D]``)."""
        s = int(embeds.shape[1])
        self.cache.check_fits(s)
        p = self.cache.length
        past, _ = self.cache.feeds(s)
        feeds = {"inputs_embeds": embeds, "position_ids": self.ops.arange_i64(p, p + s)[None],
                 "attention_mask": self.ops.ones_i64(p + s)[None], **past}
        presents = self.cache.present_buffers(s)
        out = self.engine.run(feeds, profile="prefill" if s > 1 or p == 0 else "decode", outputs=presents)
        self.cache.advance(s, out)
        return self.ops.to_host(out["logits"][0]).astype(np.float32, copy=False), out["hidden_states"][0]

    def decode(self, first_logits: np.ndarray, max_new_tokens: int, sampler: Sampler, stop_ids: set[int],
               routes: dict[int, TaskRoute], on_task: Callable[[str, Any], None],
               logits_processor: Callable | None = None) -> DecodeOutput:
        """Decode from the prefill's logits; route ``*_begin`` tokens to ``on_task(head, hidden [D])``."""
        out = DecodeOutput(token_ids=[])
        logits, head_ms, t0 = first_logits, 0.0, time.perf_counter()
        while len(out.token_ids) < max_new_tokens:
            if logits_processor is not None:
                logits = _as_numpy_logits(logits_processor(len(out.token_ids), _for_processor(logits)))
            tok = sampler(logits)
            if self.banned_ids.size and tok in self.banned_ids:  # where the reference raises: choose again
                logits = logits.copy()
                logits[self.banned_ids] = -np.inf
                tok = sampler(logits)
            out.token_ids.append(tok)
            if tok in stop_ids:
                break
            logits, _ = self.append(self.embed_ids([tok]))
            out.steps += 1
            route = routes.get(tok)
            if route is not None and len(out.token_ids) < max_new_tokens:
                logits, hidden = self.append(self.ops.reshape_embedding(route.embedding))
                out.steps += 1
                out.token_ids.append(route.placeholder_id)
                th = time.perf_counter()
                on_task(route.head, hidden[-1])
                dt = (time.perf_counter() - th) * 1e3
                out.timings_ms[f"head_{route.head}_ms"] = out.timings_ms.get(f"head_{route.head}_ms", 0.0) + dt
                head_ms += dt
                out.tasks.append(route.head)
        self.ops.sync()
        out.timings_ms["decode_ms"] = (time.perf_counter() - t0) * 1e3 - head_ms
        return out


def _for_processor(logits: np.ndarray):
    """Hand the processor a torch tensor when torch is there (the reference hook's type), else numpy."""
    try:
        import torch
    except ImportError:
        return logits
    return torch.from_numpy(np.array(logits, dtype=np.float32))


def _as_numpy_logits(x) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x.astype(np.float32, copy=False)
    return x.detach().cpu().numpy().astype(np.float32, copy=False)
