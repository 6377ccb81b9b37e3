"""Export machinery around the model-side IO declarations (``tpo_core.export_specs``).

- ``resolve``/``component_spec``: ``IOSpec`` -> the manifest's ``TensorSpec``/``ComponentSpec`` (precision
  resolved, profiles as lists).
- ``example_inputs``: valid random inputs for any shape binding (frames in 0..255, increasing positions,
  ordered boxes, sorted frame times, contiguous valid memory slots, ...), used for tracing and verifying.
- ``dynamic_shapes``: the ``torch.onnx.export(dynamo=True)`` dynamic-shape structure from the spec.
- ``check_onnx_io``/``name_dims``: assert a graph's IO names, ranks, static dims and dtypes match the spec,
  and give its symbolic dims the spec's names.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch

from runtime.manifest import ComponentSpec, TensorSpec
from tpo_core.export_specs import FLOAT, ComponentIO, IOSpec

PRECISION_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16", torch.int64: "int64",
               torch.int32: "int32", torch.bool: "bool", torch.uint8: "uint8"}
TORCH_DTYPES = {v: k for k, v in DTYPE_NAMES.items()}
ONNX_DTYPES = {"float32": onnx.TensorProto.FLOAT, "float16": onnx.TensorProto.FLOAT16,
               "bfloat16": onnx.TensorProto.BFLOAT16, "int64": onnx.TensorProto.INT64,
               "int32": onnx.TensorProto.INT32, "bool": onnx.TensorProto.BOOL, "uint8": onnx.TensorProto.UINT8}
# sizes used to trace dynamic dims: all >= 2 (torch.export specializes 0/1) and distinct where dims differ
TRACE_SIZES = {"batch": 2, "seq": 3, "past": 4, "total": 7, "clips": 5, "objects": 2, "images": 2, "prompt_tokens": 3,
               "boxes": 2}
DERIVED_DIMS = ("total",)
# max abs error allowed per output = ATOL[precision] * max(1, max |reference|) (see verify.compare)
ATOL = {"fp32": 1e-4, "fp16": 2e-2, "bf16": 8e-2}


class ExportError(RuntimeError):
    """An exported graph does not match its declared spec; ``problems`` lists every mismatch."""

    def __init__(self, component: str, problems: list[str]):
        self.component, self.problems = component, problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"graph {component!r} does not match tpo_core/export_specs.py:\n{lines}")


def check_precision(precision: str) -> torch.dtype:
    if precision not in PRECISION_DTYPES:
        raise ValueError(f"precision {precision!r} is not supported for export; "
                         f"choose one of {sorted(PRECISION_DTYPES)}")
    return PRECISION_DTYPES[precision]


def dtype_of(spec: IOSpec, precision: str) -> str:
    return DTYPE_NAMES[PRECISION_DTYPES[precision]] if spec.dtype == FLOAT else spec.dtype


def resolve(spec: IOSpec, precision: str) -> TensorSpec:
    return TensorSpec(name=spec.name, dtype=dtype_of(spec, precision), dims=tuple(spec.dims), doc=spec.doc)


def component_spec(cio: ComponentIO, file: str, sha256: str, precision: str, external_data: str | None = None,
                   tolerance: dict[str, float] | None = None, external_data_sha256: str | None = None) -> ComponentSpec:
    """The manifest entry of one exported graph."""
    return ComponentSpec(
        file=file, sha256=sha256, inputs=tuple(resolve(s, precision) for s in cio.inputs),
        outputs=tuple(resolve(s, precision) for s in cio.outputs),
        profiles={p: {d: tuple(r) for d, r in ranges.items()} for p, ranges in cio.profiles.items()},
        precision=precision, external_data=external_data, external_data_sha256=external_data_sha256,
        tolerance=tolerance if tolerance is not None else {s.name: ATOL[precision] for s in cio.outputs},
        engine=None, doc=cio.doc,
    )


def bind(cio: ComponentIO, sizes: dict[str, int] | None = None) -> dict[str, int]:
    """Concrete sizes for every symbolic dim (``total`` = ``past + seq`` unless given)."""
    out = {**TRACE_SIZES, **(sizes or {})}
    if "total" not in (sizes or {}) and "past" in out and "seq" in out:
        out["total"] = out["past"] + out["seq"]
    return out


def _shape(spec: IOSpec, sizes: dict[str, int]) -> tuple[int, ...]:
    return tuple(d if isinstance(d, int) else sizes[d] for d in spec.dims)


def _valid_slots(shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """bool [B, N]: row b has its first k_b slots valid (k_b >= 1 on row 0, may be 0 elsewhere)."""
    b, n = shape
    counts = torch.randint(0, n + 1, (b,), generator=gen)
    counts[0] = max(1, int(counts[0]))
    return torch.arange(n)[None, :] < counts[:, None]


def _example(spec: IOSpec, shape, dtype: torch.dtype, sizes: dict[str, int], gen: torch.Generator) -> torch.Tensor:
    name = spec.name
    if name in ("frames", "pixels"):
        return torch.rand(shape, generator=gen) * 255.0
    if name == "position_ids":
        return (sizes.get("past", 0) + torch.arange(shape[1]))[None].expand(shape).contiguous()
    if name == "attention_mask":
        return torch.ones(shape, dtype=torch.int64)
    if name == "frame_times":
        return torch.sort(torch.rand(shape, generator=gen), dim=-1).values
    if name == "frame_mask":
        mask = torch.ones(shape, dtype=torch.bool)
        if shape[0] > 1 and shape[1] > 1:
            mask[-1, -(shape[1] // 2):] = False  # a shorter video in the last row
        return mask
    if name in ("boxes", "prompt_box"):
        xy = torch.sort(torch.rand(shape[0], 2, 2, generator=gen), dim=1).values  # [K, (min, max), (x, y)]
        return xy.reshape(shape[0], 4).to(dtype)
    if name in ("memory_valid", "pointer_valid"):
        return _valid_slots(shape, gen)
    if name in ("memory_offsets", "pointer_offsets"):
        return torch.arange(shape[1], dtype=torch.int64)[None].expand(shape).contiguous()
    if name == "low_res_logits":
        return (torch.randn(shape, generator=gen) * 4.0).to(dtype)
    if dtype == torch.bool:
        return torch.ones(shape, dtype=torch.bool)
    if dtype == torch.int64:
        return torch.zeros(shape, dtype=torch.int64)
    return torch.randn(shape, generator=gen).to(dtype)


def example_inputs(cio: ComponentIO, precision: str, sizes: dict[str, int] | None = None,
                   seed: int = 0) -> dict[str, torch.Tensor]:
    """Valid random inputs, in spec order, for the given sizes of the symbolic dims (default: trace sizes)."""
    gen = torch.Generator().manual_seed(seed)
    bound = bind(cio, sizes)
    out = {}
    for spec in cio.inputs:
        dtype = TORCH_DTYPES[dtype_of(spec, precision)]
        out[spec.name] = _example(spec, _shape(spec, bound), dtype, bound, gen)
    return out


def is_past(name: str) -> bool:
    return name.startswith("past_")


def as_args(cio: ComponentIO, inputs: dict[str, torch.Tensor]) -> tuple:
    """Positional args of the wrapper: the LLM's past tensors go in one list (its last argument)."""
    plain = [inputs[s.name] for s in cio.inputs if not is_past(s.name)]
    past = [inputs[s.name] for s in cio.inputs if is_past(s.name)]
    return (*plain, past) if past else tuple(plain)


def dynamic_shapes(cio: ComponentIO) -> tuple:
    """``dynamic_shapes`` for ``torch.onnx.export(dynamo=True)``: ``{axis: dim name}`` per input, same nesting
    as ``as_args``."""
    # one Dim object per name, shared by every input (so e.g. all "objects" axes are one symbol); dims that are
    # sums of others (the LLM's "total" = past + seq) are left to the exporter to infer (Dim.AUTO)
    names = {d for s in cio.inputs for d in s.dims if isinstance(d, str)}
    dims = {n: torch.export.Dim.AUTO if n in DERIVED_DIMS else torch.export.Dim(n, min=0 if n == "past" else 1)
            for n in names}

    def axes(spec: IOSpec) -> dict:
        return {i: dims[d] for i, d in enumerate(spec.dims) if isinstance(d, str)}

    plain = [axes(s) for s in cio.inputs if not is_past(s.name)]
    past = [axes(s) for s in cio.inputs if is_past(s.name)]
    return (*plain, past) if past else tuple(plain)


def _value_info_dims(vi: onnx.ValueInfoProto) -> list:
    return [d.dim_param if d.HasField("dim_param") else (d.dim_value if d.HasField("dim_value") else None)
            for d in vi.type.tensor_type.shape.dim]


def check_onnx_io(model: onnx.ModelProto, cio: ComponentIO, precision: str) -> None:
    """Raise ``ExportError`` listing every mismatch of names (and order), ranks, static dims and dtypes."""
    problems = []
    for kind, values, specs in (("input", model.graph.input, cio.inputs), ("output", model.graph.output, cio.outputs)):
        names = [v.name for v in values]
        want = [s.name for s in specs]
        if names != want:
            problems.append(f"{kind} names {names} != spec {want}")
            continue
        for vi, spec in zip(values, specs):
            dims = _value_info_dims(vi)
            if len(dims) != len(spec.dims):
                problems.append(f"{kind} {spec.name}: rank {len(dims)} {dims} != spec {len(spec.dims)} {spec.dims}")
                continue
            for axis, (got, exp) in enumerate(zip(dims, spec.dims)):
                if isinstance(exp, int) and got != exp:
                    problems.append(f"{kind} {spec.name} axis {axis}: {got} != static {exp}")
                if isinstance(exp, str) and isinstance(got, int):
                    problems.append(f"{kind} {spec.name} axis {axis}: exported static {got}, spec symbolic {exp!r}")
            elem = vi.type.tensor_type.elem_type
            if elem != ONNX_DTYPES[dtype_of(spec, precision)]:
                problems.append(f"{kind} {spec.name}: dtype {onnx.TensorProto.DataType.Name(elem)} != "
                                f"{dtype_of(spec, precision)}")
    if problems:
        raise ExportError(cio.name, problems)


def name_dims(model: onnx.ModelProto, cio: ComponentIO) -> None:
    """Rename the graph's symbolic IO dims to the spec's names (exporters name derived dims like 'seq + past')."""
    for values, specs in ((model.graph.input, cio.inputs), (model.graph.output, cio.outputs)):
        by_name = {s.name: s for s in specs}
        for vi in values:
            spec = by_name.get(vi.name)
            if spec is None:
                continue
            for d, exp in zip(vi.type.tensor_type.shape.dim, spec.dims):
                if isinstance(exp, str) and not d.HasField("dim_value"):
                    d.dim_param = exp


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A tensor as numpy; bfloat16 becomes its uint16 bit pattern (numpy has no bfloat16)."""
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.uint16).numpy() if hasattr(torch, "uint16") else t.view(torch.int16).numpy()
    return t.numpy()
