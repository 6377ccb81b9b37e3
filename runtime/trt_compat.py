"""Import adapter: full TensorRT (``tensorrt``, Jetson / servers) or TensorRT-RTX (``tensorrt_rtx``).

Both modules expose the same TensorRT 10.x Python API (``Builder``, ``OnnxParser``, ``Runtime``, name-based
tensor IO, ``execute_async_v3``). The differences this project meets are gathered here, in :class:`TRT`:

=========================  =====================================  ==========================================
topic                      ``tensorrt`` 10.x                      ``tensorrt_rtx`` 1.x
=========================  =====================================  ==========================================
precision                  weak typing + ``BuilderFlag.FP16`` /   strongly typed only: precision follows the
                           ``BF16`` / ``FP8`` / ``INT8``          ONNX graph's types (no precision flags)
timing cache               ``ITimingCache`` persisted to a file   no-op (deprecated since RTX 1.2)
compute target             the GPU the builder runs on            portable AOT engine, JIT on first load;
                                                                  ``set_compute_capability`` picks targets;
                                                                  builds on a CPU-only machine
GPU needed to build        yes                                    no
=========================  =====================================  ==========================================

Nothing here is imported at module import time: :func:`load_trt` imports on demand.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any

BUILDERS = ("tensorrt", "tensorrt-rtx")
_MODULES = {"tensorrt": "tensorrt", "tensorrt-rtx": "tensorrt_rtx"}
_INSTALL = {"tensorrt": "JetPack's python3-libnvinfer (Jetson) or `pip install tensorrt` (x86/SBSA servers)",
            "tensorrt-rtx": "`pip install tensorrt-rtx`"}

# Manifest dtype -> TensorRT DataType attribute name.
TRT_DTYPES = {"float32": "FLOAT", "float16": "HALF", "bfloat16": "BF16", "int64": "INT64", "int32": "INT32",
              "bool": "BOOL", "uint8": "UINT8"}


@dataclass(frozen=True)
class TRT:
    """One imported TensorRT flavour and what it can do.

    ``name`` is the manifest's builder name ("tensorrt" or "tensorrt-rtx"); ``module`` the imported module.
    """

    name: str
    module: ModuleType
    version: str

    @property
    def is_rtx(self) -> bool:
        return self.name == "tensorrt-rtx"

    @property
    def strongly_typed_only(self) -> bool:
        """True when the builder has no precision flags (TensorRT-RTX, TensorRT 11+)."""
        return not hasattr(self.module.BuilderFlag, "FP16")

    @property
    def has_timing_cache(self) -> bool:
        """False on TensorRT-RTX, where timing-cache calls are accepted but do nothing."""
        return not self.is_rtx

    @property
    def has_progress_monitor(self) -> bool:
        return hasattr(self.module, "IProgressMonitor")

    def builder_flag(self, name: str) -> Any:
        """``BuilderFlag.<name>``; ValueError naming the flags this module has when it is absent."""
        flag = getattr(self.module.BuilderFlag, name, None)
        if flag is None:
            have = sorted(k for k in dir(self.module.BuilderFlag) if k.isupper())
            raise ValueError(f"{self.name} {self.version} has no BuilderFlag.{name}; it has {have}")
        return flag

    def network_flags(self, strongly_typed: bool) -> int:
        """Flags for ``Builder.create_network``; explicit batch is implicit in TensorRT 10."""
        flag = getattr(self.module.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
        return 1 << int(flag) if strongly_typed and flag is not None else 0

    def compute_capability(self, target: str) -> Any:
        """TensorRT-RTX ``ComputeCapability`` for "sm_89" / "SM89" / "8.9"; ValueError lists the allowed ones."""
        cc = getattr(self.module, "ComputeCapability", None)
        if cc is None:
            raise ValueError(f"{self.name} cannot target compute capabilities: it builds for the GPU it runs on")
        key = "SM" + target.lower().removeprefix("sm_").removeprefix("sm").replace(".", "")
        allowed = sorted(k for k in cc.__members__ if k.startswith("SM"))
        if key not in cc.__members__:
            raise ValueError(f"{self.name} {self.version} cannot target {target!r}; allowed: "
                             f"{[k.lower().replace('sm', 'sm_') for k in allowed]}")
        return cc.__members__[key]

    def dtype(self, manifest_dtype: str) -> Any:
        return getattr(self.module.DataType, TRT_DTYPES[manifest_dtype])


def load_trt(builder: str = "auto") -> TRT:
    """Import TensorRT: ``auto`` tries ``tensorrt`` then ``tensorrt_rtx``; the others import exactly that one.

    Raises RuntimeError saying what to install when nothing usable can be imported.
    """
    if builder not in ("auto", *BUILDERS):
        raise ValueError(f"builder {builder!r} not in ('auto', {', '.join(map(repr, BUILDERS))})")
    names = BUILDERS if builder == "auto" else (builder,)
    errors = []
    for name in names:
        try:
            module = importlib.import_module(_MODULES[name])
        except ImportError as e:
            errors.append(f"{_MODULES[name]}: {e} (install: {_INSTALL[name]})")
            continue
        return TRT(name=name, module=module, version=str(getattr(module, "__version__", "unknown")))
    raise RuntimeError("no usable TensorRT module: " + "; ".join(errors))


def available() -> list[str]:
    """Builder names importable here, e.g. ``["tensorrt-rtx"]`` on a CPU-only machine."""
    found = []
    for name in BUILDERS:
        try:
            load_trt(name)
        except RuntimeError:
            continue
        found.append(name)
    return found
