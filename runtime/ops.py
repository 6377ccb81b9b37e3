"""Array operations of the runtime on the CPU (numpy) and on CUDA (torch), behind one small interface.

The pipeline, the generators and the mask tracker call these, so the same code drives numpy buffers for ONNX
Runtime's CPU provider and torch CUDA tensors (bound by address) for the CUDA provider and TensorRT.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class NumpyOps:
    """Array ops on host numpy arrays (CPU engines)."""

    device = "cpu"

    def asarray(self, x: np.ndarray, dtype: str | None = None) -> np.ndarray:
        return np.ascontiguousarray(x if dtype is None else np.asarray(x).astype(dtype, copy=False))

    def cast(self, x: Any, dtype: str) -> np.ndarray:
        return np.ascontiguousarray(np.asarray(x).astype(dtype, copy=False))

    def zeros(self, shape: tuple[int, ...], dtype: str) -> np.ndarray:
        return np.zeros(shape, dtype)

    def to_host(self, x: Any) -> np.ndarray:
        return np.asarray(x)

    def gather_rows(self, table: np.ndarray, ids: list[int]) -> np.ndarray:
        return table[np.asarray(ids, np.int64)]

    def concat(self, parts: list, axis: int) -> np.ndarray:
        return np.concatenate(parts, axis=axis)

    def arange_i64(self, a: int, b: int) -> np.ndarray:
        return np.arange(a, b, dtype=np.int64)

    def ones_i64(self, n: int) -> np.ndarray:
        return np.ones(n, np.int64)

    def reshape_embedding(self, e: np.ndarray) -> np.ndarray:
        return e.reshape(1, 1, -1)

    def nbytes(self, x: np.ndarray) -> int:
        return int(x.nbytes)

    def sync(self) -> None:
        return None


class TorchOps(NumpyOps):
    """Array ops on torch CUDA tensors (ORT CUDA / TensorRT engines)."""

    def __init__(self, device: str):
        import torch

        self.torch, self.device = torch, device

    def _dt(self, dtype: str):
        return getattr(self.torch, dtype)

    def asarray(self, x, dtype: str | None = None):
        t = self.torch.as_tensor(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
        return t.to(self.device, dtype=None if dtype is None else self._dt(dtype)).contiguous()

    def cast(self, x, dtype: str):
        return self.asarray(x, dtype)

    def zeros(self, shape, dtype: str):
        return self.torch.zeros(shape, dtype=self._dt(dtype), device=self.device)

    def to_host(self, x) -> np.ndarray:
        if isinstance(x, np.ndarray):
            return x
        return x.detach().float().cpu().numpy() if x.is_floating_point() else x.detach().cpu().numpy()

    def gather_rows(self, table, ids: list[int]):
        return table[self.torch.as_tensor(ids, dtype=self.torch.int64, device=self.device)]

    def concat(self, parts: list, axis: int):
        return self.torch.cat(parts, dim=axis)

    def arange_i64(self, a: int, b: int):
        return self.torch.arange(a, b, dtype=self.torch.int64, device=self.device)

    def ones_i64(self, n: int):
        return self.torch.ones(n, dtype=self.torch.int64, device=self.device)

    def nbytes(self, x) -> int:
        return int(x.numel() * x.element_size())

    def sync(self) -> None:
        """Wait for this thread's current CUDA stream: the pipeline's own torch work (ONNX Runtime and TensorRT runs
        are synchronized when ``run`` returns). Not the whole device: a stream's background re-ask runs on another
        stream, and a device-wide sync made every tracked frame wait for it (``runtime.stream``)."""
        self.torch.cuda.current_stream(self.device).synchronize()
