"""ONNX Runtime backend: CPU provider (numpy in/out) and CUDA provider with IO binding on device buffers.

CPU: ``run`` takes and returns numpy arrays; preallocated numpy output buffers are bound with IO binding, so ORT
writes into them directly. CUDA: inputs may be numpy (copied to the device) or torch CUDA tensors (bound in
place by ``data_ptr()``); outputs are torch CUDA tensors, preallocated from the spec's symbolic dims when the
inputs bind them all, otherwise allocated by ORT and handed over through DLPack (no copy).

ORT has no per-run stream: the CUDA provider runs on its own stream (pass ``cuda_stream=`` at open to make it
yours). The ``stream`` given to ``run`` (default: torch's current stream) is synchronized before the run so that
the producers of the inputs are done; ORT synchronizes its outputs before ``run`` returns.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as _ort_state

from runtime.engines.base import Array, Engine
from runtime.manifest import ComponentSpec

# Every exception type ORT's C++ layer raises (Fail, InvalidArgument, RuntimeException, EPFail, ...).
ORT_ERRORS = tuple(v for v in vars(_ort_state).values() if isinstance(v, type) and issubclass(v, Exception))
OPT_LEVELS = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
              "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
# Manifest dtype -> ONNX TensorProto element type (accepted by IOBinding.bind_input/bind_output).
ONNX_ELEM = {"float32": 1, "uint8": 2, "int32": 6, "int64": 7, "bool": 9, "float16": 10, "bfloat16": 16}


class OrtEngine(Engine):
    """A component graph on ONNX Runtime.

    Args (beyond :class:`Engine`):
        threads: intra-op threads (None: ORT default = physical cores).
        inter_threads: inter-op threads (None: ORT default).
        optimization: graph optimization level, one of ``OPT_LEVELS``.
        spinning: False sets ``session.intra_op.allow_spinning=0`` (threads sleep between runs: less CPU burn,
            slightly higher latency on back-to-back runs).
        cuda_stream: CUDA only: a ``torch.cuda.Stream`` (or raw ``cudaStream_t`` int) ORT should compute on.
        provider_options: extra CUDA provider options (e.g. ``{"cudnn_conv_algo_search": "HEURISTIC"}``); fp32
            graphs default to ``use_tf32=0`` (:func:`cuda_provider_options`).
        log_severity: ORT log level (0 verbose .. 4 fatal).
        free_dims: symbolic dim name -> value, fixed for this session (``add_free_dimension_override_by_name``:
            shapes become static, so shape arithmetic folds away; inputs must then have exactly those sizes).
        cuda_graph: CUDA only: open with ``enable_cuda_graph`` (ORT refuses at load when a node would run on the
            CPU); runs must bind the same device addresses every time (:mod:`runtime.engines.ort_graph`).
    """

    backend = "ort"

    def __init__(self, name: str, spec: ComponentSpec, root: str | Path, device: str = "cpu", *,
                 threads: int | None = None, inter_threads: int | None = None, optimization: str = "all",
                 spinning: bool = False, cuda_stream: Any = None, provider_options: dict | None = None,
                 log_severity: int = 3, free_dims: dict[str, int] | None = None, cuda_graph: bool = False):
        super().__init__(name, spec, root, device)
        if optimization not in OPT_LEVELS:
            raise ValueError(f"{name}: optimization {optimization!r} not in {list(OPT_LEVELS)}")
        path = self.root / spec.file
        if not path.is_file():
            raise ValueError(f"{name}: ONNX file {path} is missing; re-export with `tpo export`.")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = OPT_LEVELS[optimization]
        opts.log_severity_level = log_severity
        if threads is not None:
            opts.intra_op_num_threads = int(threads)
        if inter_threads is not None:
            opts.inter_op_num_threads = int(inter_threads)
        if not spinning:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
        for dim, value in (free_dims or {}).items():
            opts.add_free_dimension_override_by_name(dim, int(value))
        if cuda_graph and self.device_type != "cuda":
            raise ValueError(f"{name}: cuda_graph=True needs device='cuda', got {device!r}")
        provider_options = {**(provider_options or {}), **({"enable_cuda_graph": "1"} if cuda_graph else {})}
        providers = self._providers(cuda_stream, provider_options)
        try:
            self.session = ort.InferenceSession(os.fspath(path), sess_options=opts, providers=providers)
        except ORT_ERRORS as e:
            raise RuntimeError(f"{name}: ONNX Runtime could not load {path}: {e}") from e
        if self.device_type == "cuda" and "CUDAExecutionProvider" not in self.session.get_providers():
            raise RuntimeError(f"{name}: ONNX Runtime fell back to {self.session.get_providers()}; install "
                               "onnxruntime-gpu matching your CUDA, or open with device='cpu'.")
        self._check_graph_io()

    # ------------------------------------------------------------------------------------------ setup
    def _providers(self, cuda_stream: Any, extra: dict) -> list:
        if self.device_type == "cpu":
            return ["CPUExecutionProvider"]
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise RuntimeError(f"{self.name}: this onnxruntime has no CUDAExecutionProvider (available: "
                               f"{ort.get_available_providers()}); install onnxruntime-gpu or use device='cpu'.")
        cuda = cuda_provider_options(self.device_index, getattr(self.spec, "precision", "fp32"), extra, cuda_stream)
        return [("CUDAExecutionProvider", cuda), "CPUExecutionProvider"]

    def _check_graph_io(self) -> None:
        """The graph's IO names must be the manifest's; otherwise manifest and file disagree."""
        graph_in = [i.name for i in self.session.get_inputs()]
        graph_out = [o.name for o in self.session.get_outputs()]
        want_in, want_out = [s.name for s in self.input_specs], [s.name for s in self.output_specs]
        if sorted(graph_in) != sorted(want_in) or sorted(graph_out) != sorted(want_out):
            raise ValueError(f"{self.name}: graph {self.spec.file} has inputs {graph_in} / outputs {graph_out}, "
                             f"the manifest says {want_in} / {want_out}. Re-export to regenerate both.")

    # -------------------------------------------------------------------------------------------- run
    def _run(self, inputs: dict[str, Array], bindings: dict[str, int], profile: str, stream: Any,
             outputs: dict[str, Array]) -> dict[str, Array]:
        try:
            if self.device_type == "cpu":
                return self._run_cpu(inputs, outputs)
            return self._run_cuda(inputs, bindings, stream, outputs)
        except ORT_ERRORS as e:
            shapes = {k: tuple(v.shape) for k, v in inputs.items()}
            raise RuntimeError(f"{self.name}: ONNX Runtime failed on inputs {shapes}: {e}") from e

    def _run_cpu(self, inputs: dict[str, Array], outputs: dict[str, Array]) -> dict[str, Array]:
        feeds = {k: _as_numpy(self.name, k, v) for k, v in inputs.items()}
        names = [s.name for s in self.output_specs]
        if not outputs:
            return dict(zip(names, self.session.run(names, feeds)))
        binding = self.session.io_binding()
        for k, v in feeds.items():
            binding.bind_cpu_input(k, v)
        for spec in self.output_specs:
            buf = outputs.get(spec.name)
            if buf is None:
                binding.bind_output(spec.name, "cpu")
                continue
            if not isinstance(buf, np.ndarray) or not buf.flags.c_contiguous or not buf.flags.writeable:
                raise ValueError(f"{self.name}: output buffer {spec.name!r} must be a writeable C-contiguous "
                                 "numpy array on device='cpu'.")
            binding.bind_output(spec.name, "cpu", 0, ONNX_ELEM[spec.dtype], buf.shape, buf.ctypes.data)
        self.session.run_with_iobinding(binding)
        # preallocated outputs were written in place; only the ones ORT allocated are read back (copying every
        # output, KV presents included, with copy_outputs_to_cpu() was a wasted copy per step)
        return {n: outputs[n] if n in outputs else v.numpy() for n, v in zip(names, binding.get_outputs())}

    def _run_cuda(self, inputs: dict[str, Array], bindings: dict[str, int], stream: Any,
                  outputs: dict[str, Array]) -> dict[str, Array]:
        import torch  # CUDA path only

        dev = torch.device("cuda", self.device_index)
        binding = self.session.io_binding()
        keep = []  # device copies of host inputs stay alive until the run returns
        for spec in self.input_specs:
            t = as_device_tensor(self.name, spec.name, inputs[spec.name], dev)
            keep.append(t)
            binding.bind_input(spec.name, "cuda", self.device_index, ONNX_ELEM[spec.dtype], tuple(t.shape),
                               t.data_ptr())
        shapes = self.output_shapes(bindings)
        result: dict[str, Any] = {}
        for spec in self.output_specs:
            buf = outputs.get(spec.name)
            if buf is None and shapes[spec.name] is not None:
                buf = torch.empty(shapes[spec.name], dtype=getattr(torch, spec.dtype), device=dev)
            if buf is None:
                binding.bind_output(spec.name, "cuda", self.device_index)  # ORT allocates (shape data-dependent)
                continue
            if not (isinstance(buf, torch.Tensor) and buf.device == dev and buf.is_contiguous()):
                raise ValueError(f"{self.name}: output buffer {spec.name!r} must be a contiguous torch tensor on "
                                 f"{dev}.")
            binding.bind_output(spec.name, "cuda", self.device_index, ONNX_ELEM[spec.dtype], tuple(buf.shape),
                                buf.data_ptr())
            result[spec.name] = buf
        # ORT computes on its own stream: the producers of inputs and buffers (torch work) must be done first
        (stream if stream is not None else torch.cuda.current_stream(dev)).synchronize()
        self.session.run_with_iobinding(binding)
        for spec, value in zip(self.output_specs, binding.get_outputs()):
            if spec.name not in result:
                result[spec.name] = torch.from_dlpack(value)
        del keep
        return {s.name: result[s.name] for s in self.output_specs}

    def close(self) -> None:
        self.session = None
        super().close()


def cuda_provider_options(device_index: int, precision: str, extra: dict | None = None,
                          cuda_stream: Any = None) -> dict:
    """CUDA provider options for one graph.

    fp32 graphs get ``use_tf32=0``: the CUDA EP otherwise runs fp32 MatMul/Gemm/Conv on TF32 tensor cores (10-bit
    mantissa, ~5e-4 relative per product), which moved the temporal saliency 4e-4 from the reference on an H200
    where the parity tolerance is 1e-4. fp16/bf16 graphs keep ORT's default (the flag only touches float32 ops).
    ``extra`` (the caller's provider options) wins.
    """
    cuda: dict = {"device_id": device_index}
    if precision == "fp32":
        cuda["use_tf32"] = "0"
    cuda.update(extra or {})
    if cuda_stream is not None:
        handle = getattr(cuda_stream, "cuda_stream", cuda_stream)
        cuda.update(has_user_compute_stream="1", user_compute_stream=str(int(handle)))
    return cuda


def _as_numpy(component: str, name: str, x: Array) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x if x.flags.c_contiguous else np.ascontiguousarray(x)
    if hasattr(x, "detach"):  # torch tensor on the CPU path
        if x.device.type != "cpu":
            raise ValueError(f"{component}: input {name!r} is on {x.device} but the engine runs on cpu; "
                             "pass a host array or open the engine with device='cuda'.")
        return x.detach().contiguous().numpy()
    raise ValueError(f"{component}: input {name!r} is a {type(x).__name__}; pass a numpy array.")


def as_device_tensor(component: str, name: str, x: Array, dev: Any) -> Any:
    """A contiguous torch tensor on ``dev``: numpy/CPU tensors are copied, tensors on ``dev`` are used in place."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{component}: input {name!r} is a {type(x).__name__}; pass a numpy array or torch tensor.")
    if t.device.type == "cuda" and t.device != dev:
        raise ValueError(f"{component}: input {name!r} is on {t.device}, the engine on {dev}; move it first.")
    return t.to(dev, non_blocking=False).contiguous()
