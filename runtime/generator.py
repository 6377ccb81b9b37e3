"""The LLM steps of the runtime: embedding lookup and one LLM step, for the two LLM graphs of the manifest.

The decode loop and the task-token routing are the contract's (``runtime.contract.routing.Router``); a generator
supplies its two steps on the exported graph: ``feed_token(id)`` (gather the id's embedding row; a task
placeholder id gets its learnable embedding instead, as ``TaskLLM.embed`` does) and ``feed_embedding(e)``.

- :class:`Generator` (``kv.graph = past-present``): the plain graph over a ping-pong :class:`KVCache`; any backend.
- :class:`GQAGenerator` (``kv.graph = gqa``): the GroupQueryAttention graph through
  :class:`runtime.engines.ort_llm.OrtLLM` (one shared KV buffer, IO binding, CUDA-graph decode); only the greedy
  token id crosses to the host (:class:`DeviceLogits`).

Both expose ``reset()``, ``check_fits(prompt_len, max_new)``, ``embed_ids(ids)``, ``append(embeds)``,
``feed_token(id)``, ``feed_embedding(e)``, ``capacity`` and ``length``; :func:`make_generator` picks one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from runtime.kv_cache import KVCache


class _Embedding:
    """Embedding rows for token ids (a task placeholder id gets its learnable embedding, as ``TaskLLM.embed``), and
    the KV state of ``self.kv`` (a :class:`KVCache` or an ``OrtLLM``: both have ``capacity``, ``length``,
    ``reset()`` and ``check_fits()``)."""

    table: Any
    ops: Any
    placeholders: dict[int, Any]
    kv: Any

    @property
    def capacity(self) -> int:
        return self.kv.capacity

    @property
    def length(self) -> int:
        return self.kv.length

    def reset(self) -> None:
        self.kv.reset()

    def check_fits(self, prompt_len: int, max_new: int = 0) -> None:
        self.kv.check_fits(prompt_len, max_new)

    def embed_ids(self, ids: list[int]) -> Any:
        """Token ids -> ``[1, len(ids), D]`` rows of the embedding table (placeholder ids: learnable embeddings)."""
        rows = self.ops.gather_rows(self.table, ids)
        for i, tok in enumerate(ids):
            if tok in self.placeholders:
                rows[i] = self.placeholders[tok]
        return rows[None]


class Generator(_Embedding):
    """Runs the ``llm`` engine over a :class:`KVCache`.

    Args:
        engine: the opened ``llm`` engine (inputs ``inputs_embeds [1, S, D]``, ``position_ids [1, S]``,
            ``attention_mask [1, P + S]``, ``past_*``; outputs ``logits [1, V]``, ``hidden_states [1, S, D]``,
            ``present_*``).
        cache: the preallocated cache. ``embed_table``: ``[V, D]`` input-embedding table (device array).
        ops: the pipeline's array ops (numpy on the CPU, torch on CUDA).
        placeholders: placeholder id -> its learnable input embedding ``[D]``.
    """

    def __init__(self, engine, cache: KVCache, embed_table: Any, ops, placeholders: dict[int, Any]):
        self.engine, self.cache, self.table, self.ops = engine, cache, embed_table, ops
        self.kv = cache
        self.placeholders = dict(placeholders)

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

    def feed_token(self, token: int) -> np.ndarray:
        return self.append(self.embed_ids([token]))[0]

    def feed_embedding(self, embedding: Any) -> tuple[np.ndarray, Any]:
        """One step on a task embedding ``[D]`` -> (logits, the step's hidden state ``[D]``)."""
        logits, hidden = self.append(self.ops.reshape_embedding(embedding))
        return logits, hidden[-1]


@dataclass
class DeviceLogits:
    """One step's logits left on the device (``values [V]`` float32, a view the next step overwrites) with the
    graph's own argmax ``token``; the router reads only the token unless it must sample or process the logits."""

    values: Any
    token: int
    ops: Any

    def argmax(self) -> int:
        return self.token

    def numpy(self) -> np.ndarray:
        return self.ops.to_host(self.values)


class GQAGenerator(_Embedding):
    """The GQA LLM graph through :class:`runtime.engines.ort_llm.OrtLLM` (``kv.graph = gqa``)."""

    def __init__(self, llm, embed_table: Any, ops, placeholders: dict[int, Any]):
        self.llm, self.table, self.ops = llm, embed_table, ops
        self.kv = llm
        self.placeholders = dict(placeholders)

    def append(self, embeds: Any) -> tuple[DeviceLogits, Any]:
        """Feed ``embeds [1, S, D]`` -> (:class:`DeviceLogits`, hidden ``[S, D]``: a view the next step overwrites)."""
        logits, hidden, token = self.llm.append(embeds)
        return DeviceLogits(logits, token, self.ops), hidden

    def feed_token(self, token: int) -> DeviceLogits:
        return self.append(self.embed_ids([token]))[0]

    def feed_embedding(self, embedding: Any) -> tuple[DeviceLogits, Any]:
        logits, hidden = self.append(self.ops.reshape_embedding(embedding))
        return logits, hidden[-1]


def make_generator(manifest, engines: dict, embed_table: Any, ops, placeholders: dict[int, Any],
                   threads: int | None = None):
    """The generator for the manifest's LLM graph (``kv.graph``): :class:`Generator` over the ``llm`` engine and a
    :class:`KVCache`, or :class:`GQAGenerator` over an :class:`OrtLLM` opened here."""
    if manifest.kv.graph == "gqa":
        from runtime.engines.ort_llm import OrtLLM

        llm = OrtLLM.from_manifest(manifest, device=ops.device, threads=threads)
        return GQAGenerator(llm, embed_table, ops, placeholders)
    cache = KVCache.from_manifest(manifest.kv, manifest.components["llm"].input("past_key_0").dtype, ops.device)
    return Generator(engines["llm"], cache, embed_table, ops, placeholders)
