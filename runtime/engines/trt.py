"""TensorRT backend: a serialized engine (``<component>.engine``) run with ``execute_async_v3`` on a CUDA stream.

GPU only; needs torch (device buffers and streams) and ``tensorrt`` (or ``tensorrt_rtx`` for RTX engines,
through :mod:`runtime.trt_compat`). The engine's optimization profiles are the manifest's profiles in manifest
order (``EngineRecord.profiles``): profile index i = ``spec.engine.profiles[i]``. ``run`` selects the profile
(by name, or the first one the shapes fit), sets every input shape, lets TensorRT infer output shapes, binds
torch CUDA tensors by address and enqueues on the given stream (default: torch's current stream).

Outputs are torch CUDA tensors. With ``synchronize=True`` (default) ``run`` waits for the stream before returning;
pipelines open engines with ``synchronize=False`` and order work by stream instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from runtime.engines.base import Array, Engine
from runtime.manifest import ComponentSpec
from runtime.trt_compat import TRT, load_trt


class TensorRTEngine(Engine):
    """A built TensorRT(-RTX) engine for one component.

    Args (beyond :class:`Engine`):
        synchronize: wait for the stream at the end of ``run`` (safe default; pipelines pass False).
        check_target: refuse an engine whose ``compute_target`` (``sm_XY``) differs from this GPU's.
    """

    backend = "tensorrt"

    def __init__(self, name: str, spec: ComponentSpec, root: str | Path, device: str = "cuda", *,
                 synchronize: bool = True, check_target: bool = True):
        super().__init__(name, spec, root, device)
        if self.device_type != "cuda":
            raise ValueError(f"{name}: the TensorRT backend runs on CUDA only; open with device='cuda' or use "
                             "backend='ort' for the CPU.")
        if spec.engine is None:
            raise ValueError(f"{name}: the manifest records no engine; build one with `tpo build {self.root}`.")
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError(f"{name}: torch sees no CUDA device; the TensorRT backend needs one.")
        self.torch, self.synchronize = torch, synchronize
        self.torch_device = torch.device("cuda", self.device_index)
        self.trt: TRT = load_trt(spec.engine.builder)
        if check_target:
            self._check_target()
        self.engine = self._deserialize()
        self.profile_index = {p: i for i, p in enumerate(spec.engine.profiles or self.profile_names)}
        self._check_engine_io()
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise RuntimeError(f"{name}: could not create an execution context (out of device memory?).")
        self._active_profile: int | None = None

    # ------------------------------------------------------------------------------------------ setup
    def _check_target(self) -> None:
        rec = self.spec.engine
        major, minor = self.torch.cuda.get_device_capability(self.torch_device)
        here = f"sm_{major}{minor}"
        if rec.compute_target.startswith("sm_") and rec.compute_target != here:
            raise RuntimeError(f"{self.name}: engine {rec.file} was built for {rec.compute_target}, this GPU is "
                               f"{here}; rebuild it here with `tpo build {self.root}`.")

    def _deserialize(self) -> Any:
        trt, path = self.trt.module, self.root / self.spec.engine.file
        if not path.is_file():
            raise ValueError(f"{self.name}: engine file {path} is missing; run `tpo build {self.root}`.")
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise RuntimeError(f"{self.name}: {self.trt.name} {self.trt.version} could not deserialize {path} "
                               f"(built by {self.spec.engine.builder} {self.spec.engine.builder_version}); "
                               f"rebuild with `tpo build {self.root}`.")
        return engine

    def _check_engine_io(self) -> None:
        trt, eng = self.trt.module, self.engine
        names = [eng.get_tensor_name(i) for i in range(eng.num_io_tensors)]
        ins = sorted(n for n in names if eng.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        outs = sorted(n for n in names if eng.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        want_in, want_out = sorted(s.name for s in self.input_specs), sorted(s.name for s in self.output_specs)
        if ins != want_in or outs != want_out:
            raise ValueError(f"{self.name}: engine IO {ins} -> {outs} differs from the manifest's {want_in} -> "
                             f"{want_out}; rebuild with `tpo build {self.root}`.")
        if eng.num_optimization_profiles != len(self.profile_index):
            raise ValueError(f"{self.name}: engine has {eng.num_optimization_profiles} optimization profiles, the "
                             f"manifest records {list(self.profile_index)}; rebuild with `tpo build`.")

    # -------------------------------------------------------------------------------------------- run
    def _run(self, inputs: dict[str, Array], bindings: dict[str, int], profile: str, stream: Any,
             outputs: dict[str, Array]) -> dict[str, Array]:
        torch, ctx = self.torch, self.context
        stream = stream if stream is not None else torch.cuda.current_stream(self.torch_device)
        handle = stream.cuda_stream
        index = self.profile_index[profile]
        with torch.cuda.stream(stream):
            if index != self._active_profile:
                if not ctx.set_optimization_profile_async(index, handle):
                    raise RuntimeError(f"{self.name}: could not select optimization profile {profile!r} ({index}).")
                self._active_profile = index
            for spec in self.input_specs:
                t = self._device_input(spec.name, inputs[spec.name], stream)
                if not ctx.set_input_shape(spec.name, tuple(t.shape)):
                    raise RuntimeError(f"{self.name}: TensorRT rejected shape {tuple(t.shape)} for {spec.name!r} "
                                       f"in profile {profile!r}.")
                ctx.set_tensor_address(spec.name, t.data_ptr())
            missing = ctx.infer_shapes()
            if missing:
                raise RuntimeError(f"{self.name}: TensorRT could not infer shapes of {missing}.")
            result = self._bind_outputs(outputs)
            if not ctx.execute_async_v3(handle):
                raise RuntimeError(f"{self.name}: execute_async_v3 failed (profile {profile!r}); see the TensorRT "
                                   "log above.")
        if self.synchronize:
            stream.synchronize()
        return result

    def _device_input(self, name: str, x: Array, stream: Any) -> Any:
        torch = self.torch
        t = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
        if t.device.type == "cuda" and t.device != self.torch_device:
            raise ValueError(f"{self.name}: input {name!r} is on {t.device}, the engine on {self.torch_device}.")
        copied = t.device != self.torch_device or not t.is_contiguous()
        t = t.to(self.torch_device, non_blocking=True).contiguous()
        if copied:
            t.record_stream(stream)  # the caching allocator must not reuse it before the engine has read it
        return t

    def _bind_outputs(self, outputs: dict[str, Array]) -> dict[str, Array]:
        torch, ctx, result = self.torch, self.context, {}
        for spec in self.output_specs:
            shape = tuple(ctx.get_tensor_shape(spec.name))
            buf = outputs.get(spec.name)
            if buf is None:
                buf = torch.empty(shape, dtype=getattr(torch, spec.dtype), device=self.torch_device)
            elif tuple(buf.shape) != shape or buf.device != self.torch_device or not buf.is_contiguous():
                raise ValueError(f"{self.name}: output buffer {spec.name!r} must be a contiguous {shape} tensor on "
                                 f"{self.torch_device}; got {tuple(buf.shape)} on {buf.device}.")
            ctx.set_tensor_address(spec.name, buf.data_ptr())
            result[spec.name] = buf
        return result

    def close(self) -> None:
        self.context = self.engine = self.runtime = None
        super().close()
