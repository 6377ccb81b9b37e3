"""A preallocated, fixed-capacity KV cache for the LLM graph (past/present interface).

The LLM graph (manifest component ``llm``) takes ``past_key_i`` / ``past_value_i`` ``[1, KVH, P, Hd]`` and
returns ``present_key_i`` / ``present_value_i`` ``[1, KVH, P + S, Hd]`` (past + the S new positions).
:class:`KVCache` keeps, for each of the ``2 L`` tensors, **two** flat buffers of ``KVH * capacity * Hd``
elements (ping-pong): ``past`` is a reshaped view of the first ``KVH * P * Hd`` elements of the active
buffer (a contiguous view: no copy), and ``present`` is bound, as a preallocated engine output, to the first
``KVH * (P + S) * Hd`` elements of the other buffer; :meth:`advance` swaps them. Nothing is allocated per
token and memory is fixed at ``2 * 2L * KVH * capacity * Hd`` elements.

``capacity`` is the manifest's ``kv.max_context``; :meth:`check_fits` raises a ``ValueError`` naming the
lengths before a request that would overflow it.

Arrays are numpy (CPU engines) or torch tensors (``device="cuda"``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from runtime.contract.prompt import capacity_error
from runtime.manifest import KVSpec

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


class KVCache:
    """Fixed-capacity cache: ``layers`` x (key, value), each ``[1, kv_heads, length, head_dim]``.

    Args:
        layers, kv_heads, head_dim, capacity: from the manifest's ``kv`` block (capacity = ``max_context``).
        dtype: ``float32`` | ``float16`` | ``bfloat16`` (the LLM graph's past/present dtype).
        device: ``"cpu"`` (numpy) or ``"cuda[:N]"`` (torch).
    """

    def __init__(self, layers: int, kv_heads: int, head_dim: int, capacity: int, dtype: str = "float32",
                 device: str = "cpu"):
        for name, v in (("layers", layers), ("kv_heads", kv_heads), ("head_dim", head_dim), ("capacity", capacity)):
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"KVCache: {name} must be a positive int, got {v!r}")
        if dtype not in DTYPE_BYTES:
            raise ValueError(f"KVCache: dtype {dtype!r} not in {sorted(DTYPE_BYTES)}")
        self.layers, self.kv_heads, self.head_dim, self.capacity = layers, kv_heads, head_dim, capacity
        self.dtype, self.device = dtype, device
        n = 2 * layers
        size = kv_heads * capacity * head_dim
        self._bufs = [[self._alloc(size) for _ in range(n)] for _ in range(2)]
        self._active = 0
        self.length = 0

    @classmethod
    def from_manifest(cls, kv: KVSpec, dtype: str, device: str = "cpu") -> KVCache:
        return cls(kv.layers, kv.kv_heads, kv.head_dim, kv.max_context, dtype, device)

    def _alloc(self, size: int) -> Any:
        if self.device == "cpu":
            if self.dtype == "bfloat16":
                raise ValueError("KVCache: bfloat16 needs device='cuda' (numpy has no bfloat16); export fp32/fp16 "
                                 "for the CPU")
            return np.zeros(size, dtype=self.dtype)
        import torch

        return torch.zeros(size, dtype=getattr(torch, self.dtype), device=self.device)

    @property
    def nbytes(self) -> int:
        """Bytes held (both ping-pong halves)."""
        return 2 * 2 * self.layers * self.kv_heads * self.capacity * self.head_dim * DTYPE_BYTES[self.dtype]

    @property
    def free(self) -> int:
        return self.capacity - self.length

    def names(self) -> list[str]:
        return [f"past_{kind}_{i}" for i in range(self.layers) for kind in ("key", "value")]

    def reset(self) -> None:
        """Forget every cached position (buffers are kept)."""
        self.length, self._active = 0, 0

    def check_fits(self, prompt_len: int, max_new_tokens: int = 0) -> None:
        """Raise ValueError if ``prompt_len`` (+ ``max_new_tokens``, + what is cached) exceeds the capacity."""
        err = capacity_error(prompt_len, max_new_tokens, self.capacity, self.length)
        if err:
            raise ValueError(err)

    def _view(self, flat: Any, length: int) -> Any:
        return flat[: self.kv_heads * length * self.head_dim].reshape(1, self.kv_heads, length, self.head_dim)

    def past(self) -> dict[str, Any]:
        """``{past_key_i / past_value_i: [1, KVH, length, Hd]}`` views of the active buffers (no copy)."""
        return {n: self._view(b, self.length) for n, b in zip(self.names(), self._bufs[self._active])}

    def present_buffers(self, new: int) -> dict[str, Any]:
        """Preallocated outputs ``{present_*: [1, KVH, length + new, Hd]}`` in the inactive buffers."""
        if self.length + new > self.capacity:
            raise ValueError(f"KV cache overflow: {self.length} cached + {new} new > capacity {self.capacity}; "
                             "lower max_new_tokens or re-export with a larger llm.max_context")
        other = self._bufs[1 - self._active]
        return {n.replace("past_", "present_", 1): self._view(b, self.length + new)
                for n, b in zip(self.names(), other)}

    def advance(self, new: int, outputs: dict[str, Any] | None = None) -> None:
        """After a run wrote ``present_*`` (``length + new`` positions) into :meth:`present_buffers`: swap.

        ``outputs``: the engine's outputs; any ``present_*`` that is not the preallocated buffer (a backend that
        ignored it) is copied in, so the cache stays correct either way.
        """
        if outputs is not None:
            for name, buf in self.present_buffers(new).items():
                out = outputs.get(name)
                if out is None:
                    raise RuntimeError(f"the LLM engine returned no {name!r}; the manifest and graph disagree")
                if out is not buf and _ptr(out) != _ptr(buf):
                    buf[...] = out
        self._active = 1 - self._active
        self.length += new

    def feeds(self, new: int) -> tuple[dict[str, Any], dict[str, int]]:
        """(past views, {"past": length, "total": length + new}) for a run adding ``new`` positions."""
        return self.past(), {"past": self.length, "total": self.length + new}


def _ptr(x: Any) -> int:
    if isinstance(x, np.ndarray):
        return x.__array_interface__["data"][0]
    return int(x.data_ptr())
