"""The engine interface: one component graph, typed IO from the manifest, validated ``run``.

An :class:`Engine` wraps one manifest component (``vision``, ``llm``, ``mask_decoder``, ...) on one backend.
Inputs and outputs are typed by the component's :class:`~runtime.manifest.TensorSpec` list (name, dtype, dims;
dims are ints or symbolic names whose ``[min, opt, max]`` ranges come from the component's profiles).

``run`` validates every input before the backend sees it and raises ``ValueError`` naming the component, the
input, what was given, what is allowed and what to do; backend failures raise ``RuntimeError``. Between the
(host-only) validation and the backend run it calls :func:`runtime.engines.gate.wait_turn`: on a thread with a
frame gate installed (a stream's background re-ask) the run waits while a frame is being processed. Arrays are
numpy arrays (CPU) or torch tensors (CUDA); torch is optional and imported only for CUDA work.
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any

from runtime.engines.gate import wait_turn
from runtime.manifest import ComponentSpec, TensorSpec

Array = Any  # numpy.ndarray or torch.Tensor


def dtype_name(x: Array) -> str:
    """Manifest dtype name of a numpy array or torch tensor ("float32", "int64", "bool", ...)."""
    return str(x.dtype).removeprefix("torch.")


def parse_device(device: str) -> tuple[str, int]:
    """``"cpu"`` -> ("cpu", 0); ``"cuda"`` / ``"cuda:1"`` -> ("cuda", index)."""
    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda") or (index and not index.isdigit()) or (kind == "cpu" and index):
        raise ValueError(f"device {device!r} is not one of 'cpu', 'cuda', 'cuda:N'")
    return kind, int(index or 0)


def _fmt_dims(spec: TensorSpec) -> str:
    return "[" + ", ".join(str(d) for d in spec.dims) + "]"


class Engine(abc.ABC):
    """One component graph on one backend.

    Args:
        name: the manifest component name (used in every error message).
        spec: the component's :class:`ComponentSpec`.
        root: the manifest folder (``spec.file`` and ``spec.engine.file`` are relative to it).
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Attributes:
        input_specs / output_specs: the typed IO, in manifest order.
        last_profile: the profile name the last ``run`` used (TensorRT: profile index = manifest order).
    """

    backend = "abstract"

    def __init__(self, name: str, spec: ComponentSpec, root: str | Path, device: str = "cpu"):
        self.name, self.spec, self.root = name, spec, Path(root)
        self.device = device
        self.device_type, self.device_index = parse_device(device)
        self.input_specs: list[TensorSpec] = list(spec.inputs)
        self.output_specs: list[TensorSpec] = list(spec.outputs)
        self.profile_names: list[str] = list(spec.profiles)
        self.last_profile: str | None = None
        self._closed = False

    # ----------------------------------------------------------------------------------------------- public
    def run(self, inputs: dict[str, Array], profile: str | None = None, stream: Any = None,
            outputs: dict[str, Array] | None = None) -> dict[str, Array]:
        """Run the graph once.

        Args:
            inputs: every input by name; shapes must fit one profile (or ``profile`` when given).
            profile: a profile name of the component (``default``; the LLM has ``prefill``/``decode``);
                None picks the first profile, in manifest order, that the input shapes fit.
            stream: CUDA backends only: a ``torch.cuda.Stream`` to enqueue on (None: the current stream).
            outputs: optional preallocated output buffers by name; they are written in place and returned.

        Returns:
            ``{output name: array}`` for every output (the preallocated buffer where one was given).
        """
        if self._closed:
            raise RuntimeError(f"{self.name}: engine is closed; open a new one with open_engine()")
        bindings, pname = self.validate_inputs(inputs, profile)
        outputs = outputs or {}
        self.validate_outputs(outputs, bindings)
        wait_turn()  # a background re-ask's thread waits here while a stream frame is processed (engines.gate)
        result = self._run(inputs, bindings, pname, stream, outputs)
        self.last_profile = pname
        return result

    def validate_inputs(self, inputs: dict[str, Array], profile: str | None = None) -> tuple[dict[str, int], str]:
        """Check names, dtypes, ranks, static dims, then profile ranges; returns (dim bindings, profile name)."""
        names = [s.name for s in self.input_specs]
        unknown = sorted(set(inputs) - set(names))
        if unknown:
            raise ValueError(f"{self.name}: unknown input(s) {unknown}; the inputs are {names}. "
                             "Pass exactly the inputs listed in the manifest.")
        for spec in self.input_specs:
            if spec.name not in inputs:
                raise ValueError(f"{self.name}: missing input {spec.name!r} ({spec.dtype} {_fmt_dims(spec)}); "
                                 f"the inputs are {names}.")
            self._check_tensor(spec, inputs[spec.name], "input")
        shapes = {s.name: tuple(int(n) for n in inputs[s.name].shape) for s in self.input_specs}
        if profile is not None and profile not in self.spec.profiles:
            raise ValueError(f"{self.name}: unknown profile {profile!r}; the profiles are {self.profile_names}.")
        pname = profile or self._first_fitting_profile(shapes)
        self.spec.check_shapes(self.name, shapes, pname)
        bindings: dict[str, int] = {}
        for spec in self.input_specs:
            for d, n in zip(spec.dims, shapes[spec.name]):
                if isinstance(d, str):
                    bindings[d] = n
        return bindings, pname

    def output_shapes(self, bindings: dict[str, int]) -> dict[str, tuple[int, ...] | None]:
        """Output shapes from the spec's dims; None where a dim is not bound by the inputs (e.g. ``past+seq``)."""
        result: dict[str, tuple[int, ...] | None] = {}
        for spec in self.output_specs:
            free = [d for d in spec.symbols() if d not in bindings]
            result[spec.name] = None if free else spec.shape_for(bindings)
        return result

    def validate_outputs(self, outputs: dict[str, Array], bindings: dict[str, int]) -> None:
        """Check preallocated output buffers: known names, dtype, and shape where the spec determines it."""
        names = [s.name for s in self.output_specs]
        unknown = sorted(set(outputs) - set(names))
        if unknown:
            raise ValueError(f"{self.name}: unknown output buffer(s) {unknown}; the outputs are {names}.")
        expected = self.output_shapes(bindings)
        for spec in self.output_specs:
            if spec.name not in outputs:
                continue
            buf = outputs[spec.name]
            if dtype_name(buf) != spec.dtype:
                raise ValueError(f"{self.name}: output buffer {spec.name!r} has dtype {dtype_name(buf)}, "
                                 f"expected {spec.dtype}. Allocate it with dtype {spec.dtype}.")
            shape = expected[spec.name]
            if shape is not None and tuple(buf.shape) != shape:
                raise ValueError(f"{self.name}: output buffer {spec.name!r} has shape {tuple(buf.shape)}, "
                                 f"these inputs produce {shape} ({_fmt_dims(spec)} with {bindings}). "
                                 "Allocate it with that shape or omit it.")

    def close(self) -> None:
        """Release backend resources; the engine cannot run afterwards."""
        self._closed = True

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        io = ", ".join(f"{s.name}:{s.dtype}{_fmt_dims(s)}" for s in self.input_specs)
        return f"{type(self).__name__}({self.name!r}, device={self.device!r}, inputs=({io}))"

    # ---------------------------------------------------------------------------------------------- backend
    @abc.abstractmethod
    def _run(self, inputs: dict[str, Array], bindings: dict[str, int], profile: str, stream: Any,
             outputs: dict[str, Array]) -> dict[str, Array]:
        """Backend run on validated inputs; must raise RuntimeError on failure."""

    # -------------------------------------------------------------------------------------------- internals
    def _check_tensor(self, spec: TensorSpec, x: Array, kind: str) -> None:
        if not hasattr(x, "shape") or not hasattr(x, "dtype"):
            raise ValueError(f"{self.name}: {kind} {spec.name!r} is a {type(x).__name__}; pass a numpy array "
                             "or a torch tensor.")
        shape, dt = tuple(int(n) for n in x.shape), dtype_name(x)
        if dt != spec.dtype:
            raise ValueError(f"{self.name}: {kind} {spec.name!r} has dtype {dt}, expected {spec.dtype}. "
                             f"Cast it to {spec.dtype} before calling run().")
        if len(shape) != len(spec.dims):
            raise ValueError(f"{self.name}: {kind} {spec.name!r} has shape {shape} (rank {len(shape)}), expected "
                             f"rank {len(spec.dims)} {_fmt_dims(spec)}.")
        for axis, (d, n) in enumerate(zip(spec.dims, shape)):
            if isinstance(d, int) and d != n:
                raise ValueError(f"{self.name}: {kind} {spec.name!r} has shape {shape}, but dim {axis} must be "
                                 f"{d} (static in {_fmt_dims(spec)}). Resize the input, or re-export the graph.")

    def _first_fitting_profile(self, shapes: dict[str, tuple[int, ...]]) -> str:
        for pname in self.profile_names:
            try:
                self.spec.check_shapes(self.name, shapes, pname)
            except ValueError:
                continue
            return pname
        self.spec.check_shapes(self.name, shapes, None)  # raises, listing every profile's reason
        raise AssertionError("check_shapes accepted shapes that no single profile accepted")
