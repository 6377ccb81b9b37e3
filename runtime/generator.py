"""The ``llm`` engine over a preallocated :class:`KVCache`: embedding lookup and one LLM step.

The decode loop and the task-token routing are the contract's (``runtime.contract.routing.Router``); this class
supplies its two steps on the exported graph: ``feed_token(id)`` (gather the id's embedding row; a task
placeholder id gets its learnable embedding instead, as ``TaskLLM.embed`` does) and ``feed_embedding(e)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from runtime.kv_cache import KVCache


class Generator:
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
        self.placeholders = dict(placeholders)

    def embed_ids(self, ids: list[int]) -> Any:
        """Token ids -> ``[1, len(ids), D]`` rows of the embedding table (placeholder ids: learnable embeddings)."""
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

    def feed_token(self, token: int) -> np.ndarray:
        return self.append(self.embed_ids([token]))[0]

    def feed_embedding(self, embedding: Any) -> tuple[np.ndarray, Any]:
        """One step on a task embedding ``[D]`` -> (logits, the step's hidden state ``[D]``)."""
        logits, hidden = self.append(self.ops.reshape_embedding(embedding))
        return logits, hidden[-1]
