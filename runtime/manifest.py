"""The manifest: the only contract between ``export/`` (writer) and ``runtime/`` (reader).

``manifest.json`` in an export folder describes every component graph (file, sha256, typed IO, shape profiles,
precision, built engines), the tensor files the runtime gathers from (token-embedding table, task embeddings,
...), the tokenizer, the task tokens, the prompt template, preprocessing, the KV layout, the mask memory bank,
head post-processing and generation limits. Every section is a frozen dataclass. Loading is strict: every key of
every section must be present with the right type (``null`` only where a field is optional), unknown keys are
refused, and every problem is gathered into one :class:`ManifestError` naming the key and the fix. The runtime
reads attributes only: nothing is defaulted on the reader's side.

Tensor dims are ints (static) or names (symbolic). A component's ``profiles`` map a profile name (``default``;
the LLM has ``prefill`` and ``decode``) to ``{dim_name: [min, opt, max]}`` for every symbolic dim of its inputs.
The sections are built from the model config next to the component IO (``tpo_core/export_specs.py``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.contract.prompt import HEADS, PromptTemplate, TimeSentence

SCHEMA = "tpo-edge/manifest"
SCHEMA_VERSION = 2
DTYPES = ("float32", "float16", "bfloat16", "int64", "int32", "bool", "uint8")
PRECISIONS = ("fp32", "fp16", "bf16", "fp8", "int8", "int4")  # graph types; int8/fp8 mean Q/DQ nodes
ROLES = ("begin", "placeholder", "input")
RESIZE_MODES = ("bicubic", "bilinear")
KV_GRAPHS = ("past-present", "gqa")
REQUIRED_COMPONENTS = ("vision", "llm", "head_region", "head_temporal", "mask_image_encoder", "mask_decoder",
                       "mask_memory_attention", "mask_memory_encoder")
_FIX = "Re-export with `tpo export` (and `tpo build` for engines) using this toolkit version."

__all__ = ["ComponentSpec", "EngineRecord", "GenerationSpec", "HeadsSpec", "KVSpec", "Manifest", "ManifestError",
           "MaskSpec", "PreprocessSpec", "PromptTemplate", "SourceInfo", "TaskToken", "TemporalHeadSpec", "TensorFile",
           "TensorSpec", "TimeSentence", "TokenizerSpec", "sha256_file"]


class ManifestError(ValueError):
    """A manifest that cannot be used; ``problems`` lists every issue found."""

    def __init__(self, path: str | Path, problems: list[str]):
        self.path, self.problems = str(path), list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"manifest {self.path} is not usable:\n{lines}\n{_FIX}")


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------ sections
@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: ``dims`` entries are ints (static) or symbolic dim names."""

    name: str
    dtype: str
    dims: tuple[int | str, ...]
    doc: str

    def symbols(self) -> list[str]:
        return [d for d in self.dims if isinstance(d, str)]

    def shape_for(self, bindings: dict[str, int]) -> tuple[int, ...]:
        return tuple(d if isinstance(d, int) else int(bindings[d]) for d in self.dims)


@dataclass(frozen=True)
class EngineRecord:
    """A built TensorRT(-RTX) engine for one component.

    compute_target: ``sm_XY`` (full TensorRT, e.g. sm_87 Orin, sm_90 H100), ``rtx-jit`` or ``rtx-jit:sm_89,...``
    (TensorRT-RTX), ``unknown`` when the GPU could not be queried.
    """

    file: str
    sha256: str
    builder: str  # "tensorrt" or "tensorrt-rtx"
    builder_version: str
    precision: str
    compute_target: str
    profiles: tuple[str, ...]


@dataclass(frozen=True)
class ComponentSpec:
    """One exported graph. ``tolerance``: output name -> max abs error ``tpo verify`` allows (x max(1, |ref|))."""

    file: str
    sha256: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    profiles: dict[str, dict[str, tuple[int, int, int]]]
    precision: str  # the exported graph's types
    external_data: str | None  # ONNX external-data file (graphs > 2 GB), relative to the manifest
    external_data_sha256: str | None
    tolerance: dict[str, float]
    engine: EngineRecord | None
    doc: str

    def input(self, name: str) -> TensorSpec:
        for t in self.inputs:
            if t.name == name:
                return t
        raise KeyError(f"no input {name!r}; inputs are {[t.name for t in self.inputs]}")

    def max_dim(self, dim: str) -> int:
        """The largest value any profile allows for symbolic dim ``dim``."""
        return max(int(r[dim][2]) for r in self.profiles.values() if dim in r)

    def check_shapes(self, component: str, shapes: dict[str, tuple[int, ...]], profile: str | None = None) -> str:
        """Return the first profile (manifest order) the input shapes fit; ValueError if none (or not the named one)."""
        names = [profile] if profile else list(self.profiles)
        errors = []
        for pname in names:
            err = self._profile_error(pname, shapes)
            if err is None:
                return pname
            errors.append(f"profile {pname!r}: {err}")
        raise ValueError(f"{component}: input shapes {shapes} fit no engine profile ({'; '.join(errors)}). "
                         "Re-export with a larger profile (see `tpo export --help`) or pass smaller inputs.")

    def _profile_error(self, pname: str, shapes: dict[str, tuple[int, ...]]) -> str | None:
        if pname not in self.profiles:
            return f"unknown profile; known: {sorted(self.profiles)}"
        ranges, bound = self.profiles[pname], {}
        for spec in self.inputs:
            if spec.name not in shapes:
                return f"missing input {spec.name!r}"
            shape = tuple(shapes[spec.name])
            if len(shape) != len(spec.dims):
                return f"{spec.name} has rank {len(shape)}, expected {len(spec.dims)} {list(spec.dims)}"
            for d, n in zip(spec.dims, shape):
                if isinstance(d, int):
                    if d != n:
                        return f"{spec.name} dim {n} != static {d}"
                    continue
                lo, _, hi = ranges[d]
                if not lo <= n <= hi:
                    return f"{spec.name} dim {d}={n} outside [{lo}, {hi}]"
                if bound.setdefault(d, n) != n:
                    return f"dim {d} is {bound[d]} in one input and {n} in {spec.name}"
        return None


@dataclass(frozen=True)
class SourceInfo:
    """What was exported: the checkpoint ('embedded', 'untrained-tiny', 'in-memory' or a folder) and its hashes."""

    checkpoint: str
    sha256: str | None
    preset: str
    config: dict  # the model config (TPOConfig.to_dict); the runtime never reads it, tpo verify does
    tokenizer_sha256: str | None
    exporter: str


@dataclass(frozen=True)
class TensorFile:
    """A tensor the runtime gathers from (``.npy``; bfloat16 stored as its uint16 bit pattern)."""

    file: str
    sha256: str
    dtype: str
    shape: tuple[int, ...]
    storage: str
    doc: str


@dataclass(frozen=True)
class TokenizerSpec:
    """``file``: a HF ``tokenizers`` JSON (hash-checked like every other file); each prompt chunk starts with
    ``bos_id`` when ``bos_per_chunk``."""

    file: str
    sha256: str
    kind: str
    bos_id: int
    eos_id: int
    pad_id: int
    unk_id: int | None
    bos_per_chunk: bool


@dataclass(frozen=True)
class TaskToken:
    """One task token: ``begin`` (triggers ``head`` and forces ``placeholder``), ``placeholder`` (input embedding =
    the tensor ``embedding``) or ``input`` (embedded from a box by the graph ``embedding_graph``; never generated)."""

    id: int
    role: str
    head: str | None
    placeholder: str | None
    placeholder_id: int | None
    embedding: str | None
    embedding_graph: str | None


@dataclass(frozen=True)
class PreprocessSpec:
    """Vision input: ``num_frames`` frames sampled middle-of-segment, resized to ``size`` (``resize``, align_corners,
    antialias), clamped to ``clamp``, layout ``[B, T, 3, S, S]`` RGB float32 0..255; the graph normalizes with
    ``mean`` / ``std`` ([0, 1] units)."""

    num_frames: int
    sampling: str
    size: int
    resize: str
    align_corners: bool
    antialias: bool
    clamp: tuple[float, float]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


@dataclass(frozen=True)
class KVSpec:
    """The LLM's KV cache: ``layers`` x (key, value), keys cached after RoPE. ``graph``: ``past-present`` (the plain
    graph: ``past_*`` ``[batch, kv_heads, past, head_dim]`` in, ``present_*`` ``[.., past + seq, ..]`` out; driven by
    ``runtime.generator.Generator`` over ``runtime.kv_cache.KVCache``) or ``gqa`` (GroupQueryAttention on ONE
    ``[batch, kv_heads, max_context, head_dim]`` buffer per tensor, bound as both ``past_*`` and ``present_*``,
    positions from ``attention_mask``; driven by ``runtime.engines.ort_llm.OrtLLM``)."""

    graph: str
    layers: int
    kv_heads: int
    head_dim: int
    max_context: int
    dtype: str
    past_names: tuple[str, ...]
    present_names: tuple[str, ...]
    rope_theta: float
    hidden_size: int
    vocab_size: int


@dataclass(frozen=True)
class MaskSpec:
    """The mask head's image input (``image_size``, bilinear + antialias, 0..255; the graph normalizes) and its
    memory bank (``memory_capacity`` spatial slots, ``pointer_capacity`` pointer slots; policy:
    ``runtime.contract.memory``). ``skip_last_memory``: the last frame of a clip writes no memory."""

    image_size: int
    low_res: int
    embed_size: int
    hidden_dim: int
    mem_dim: int
    memory_capacity: int
    pointer_capacity: int
    resize: str
    antialias: bool
    align_corners: bool
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    threshold: float
    no_object_score: float
    skip_last_memory: bool


@dataclass(frozen=True)
class TemporalHeadSpec:
    """Temporal post-processing: softmax foreground score (class ``foreground_index``), (cx, w) spans x duration,
    clamped, rounded to ``round_to_s``; invalid frames' saliency is ``saliency_fill``."""

    round_to_s: float
    foreground_index: int
    num_queries: int
    max_clips: int
    saliency_fill: float


@dataclass(frozen=True)
class HeadsSpec:
    """Head post-processing, and ``untrained``: heads the exported model has no trained weights for (the runtime
    refuses a request routed to one, naming the head and how to train it)."""

    temporal: TemporalHeadSpec
    mask_threshold: float
    untrained: tuple[str, ...]


@dataclass(frozen=True)
class GenerationSpec:
    max_new_tokens: int
    eos_id: int
    stop_ids: tuple[int, ...]


@dataclass(frozen=True)
class Manifest:
    """Parsed, validated ``manifest.json``. ``root`` is the folder it was read from (not serialized)."""

    schema: str
    schema_version: int
    toolkit_version: str
    source: SourceInfo
    precision: str
    opset: int
    components: dict[str, ComponentSpec]
    tensors: dict[str, TensorFile]
    tokenizer: TokenizerSpec
    task_tokens: dict[str, TaskToken]
    prompt: PromptTemplate
    preprocess: PreprocessSpec
    kv: KVSpec
    mask: MaskSpec
    heads: HeadsSpec
    generation: GenerationSpec
    root: Path | None = field(default=None, compare=False)

    def path_of(self, relative: str) -> Path:
        assert self.root is not None, "manifest has no root folder; load it with Manifest.load(dir)"
        return self.root / relative

    def with_component(self, name: str, spec: ComponentSpec) -> Manifest:
        return dataclasses.replace(self, components={**self.components, name: spec})

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data.pop("root")
        return data

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / "manifest.json"
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, folder: str | Path, verify_hashes: bool = True, require_all: bool = True,
             verify_engines: bool = True) -> Manifest:
        """Read and validate ``manifest.json`` in ``folder`` (or the file itself).

        require_all: every component in ``REQUIRED_COMPONENTS`` must be present (False for partial exports).
        verify_engines: also check built engine files (False when rebuilding them).
        """
        folder = Path(folder)
        path = folder / "manifest.json" if folder.is_dir() else folder
        if not path.is_file():
            raise FileNotFoundError(f"no manifest.json at {path}; point to a folder written by `tpo export`")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ManifestError(path, [f"not valid JSON: {e}"]) from e
        manifest = dataclasses.replace(cls.from_dict(data, path, require_all=require_all), root=path.parent)
        manifest.verify_files(verify_hashes, verify_engines=verify_engines)
        return manifest

    @classmethod
    def from_dict(cls, data: Any, path: str | Path = "<dict>", require_all: bool = True) -> Manifest:
        if not isinstance(data, dict):
            raise ManifestError(path, [f"the manifest must be a JSON object, got {type(data).__name__}"])
        if data.get("schema") != SCHEMA:
            raise ManifestError(path, [f"schema is {data.get('schema')!r}, expected {SCHEMA!r}: not a tpo-edge "
                                       "manifest"])
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ManifestError(path, [f"schema_version is {version!r}; this runtime reads {SCHEMA_VERSION} "
                                       "(an older export: re-export the model with this toolkit version)"])
        problems: list[str] = []
        manifest = _parse(cls, {k: v for k, v in data.items()}, "", problems)
        if problems:
            raise ManifestError(path, problems)
        _validate(manifest, problems, require_all)
        if problems:
            raise ManifestError(path, problems)
        return manifest

    def verify_files(self, verify_hashes: bool = True, verify_engines: bool = True) -> None:
        """Check that every file the runtime reads exists and (optionally) matches its sha256."""
        problems = []
        entries = [(f"component {n}", c.file, c.sha256) for n, c in self.components.items()]
        entries += [(f"external data of {n}", c.external_data, c.external_data_sha256)
                    for n, c in self.components.items() if c.external_data]
        if verify_engines:
            entries += [(f"engine {n}", c.engine.file, c.engine.sha256) for n, c in self.components.items()
                        if c.engine]
        entries += [(f"tensor {n}", t.file, t.sha256) for n, t in self.tensors.items()]
        entries.append(("tokenizer", self.tokenizer.file, self.tokenizer.sha256))
        for what, rel, digest in entries:
            p = self.path_of(rel)
            if not p.is_file():
                problems.append(f"{what}: file {rel} is missing")
            elif verify_hashes and digest and sha256_file(p) != digest:
                problems.append(f"{what}: file {rel} changed since export (sha256 mismatch)")
        if problems:
            raise ManifestError(self.path_of("manifest.json"), problems)


# ------------------------------------------------------------------------------------------------ parsing
def _parse(tp: Any, value: Any, where: str, problems: list[str]) -> Any:
    """``value`` (from JSON) as type ``tp``; appends a problem (and returns None) where it does not fit."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _parse_dataclass(tp, value, where, problems)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _parse(inner[0], value, where, problems)
        for a in inner:  # int | str: the first type the value has
            if _is(a, value):
                return value
        return _bad(where, value, " or ".join(a.__name__ for a in inner), problems)
    if origin is tuple:
        if not isinstance(value, list):
            return _bad(where, value, "a list", problems)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_parse(args[0], v, f"{where}[{i}]", problems) for i, v in enumerate(value))
        if len(value) != len(args):
            problems.append(f"{where} must have {len(args)} values, got {len(value)}")
            return None
        return tuple(_parse(a, v, f"{where}[{i}]", problems) for i, (a, v) in enumerate(zip(args, value)))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            return _bad(where, value, "an object", problems)
        if not args:
            return value
        return {k: _parse(args[1], v, f"{where}.{k}", problems) for k, v in value.items()}
    if _is(tp, value):
        return float(value) if tp is float else value
    return _bad(where, value, tp.__name__, problems)


def _is(tp: type, value: Any) -> bool:
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def _bad(where: str, value: Any, expected: str, problems: list[str]) -> None:
    problems.append(f"{where or 'manifest'} must be {expected}, got {type(value).__name__} {str(value)[:60]!r}")
    return None


def _parse_dataclass(cls: type, value: Any, where: str, problems: list[str]) -> Any:
    if not isinstance(value, dict):
        return _bad(where, value, f"an object ({cls.__name__})", problems)
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.name != "root"]
    names = {f.name for f in fields}
    prefix = f"{where}." if where else ""
    bad = [f"{prefix}{k} is missing" for k in (f.name for f in fields) if k not in value]
    bad += [f"{prefix}{k} is not a known key" for k in sorted(set(value) - names)]
    if bad:
        problems.extend(bad)
        return None
    before = len(problems)
    kwargs = {f.name: _parse(hints[f.name], value[f.name], f"{prefix}{f.name}", problems) for f in fields}
    return cls(**kwargs) if len(problems) == before else None


# ------------------------------------------------------------------------------------------------ meaning
def _validate(m: Manifest, problems: list[str], require_all: bool) -> None:
    if m.precision not in PRECISIONS:
        problems.append(f"precision {m.precision!r} not in {PRECISIONS}")
    for name in REQUIRED_COMPONENTS if require_all else ():
        if name not in m.components:
            problems.append(f"component {name!r} is missing")
    for name, comp in m.components.items():
        _validate_component(name, comp, problems)
    _validate_tokens(m, problems)
    for key in ("layers", "kv_heads", "head_dim", "max_context", "hidden_size", "vocab_size"):
        if getattr(m.kv, key) <= 0:
            problems.append(f"kv.{key} must be a positive int, got {getattr(m.kv, key)}")
    if m.kv.graph not in KV_GRAPHS:
        problems.append(f"kv.graph {m.kv.graph!r} not in {KV_GRAPHS}")
    if len(m.kv.past_names) != 2 * m.kv.layers or len(m.kv.present_names) != 2 * m.kv.layers:
        problems.append(f"kv.past_names / present_names must list 2 x kv.layers = {2 * m.kv.layers} names")
    if m.preprocess.resize not in RESIZE_MODES:
        problems.append(f"preprocess.resize {m.preprocess.resize!r} not in {RESIZE_MODES}")
    for key in ("num_frames", "size"):
        if getattr(m.preprocess, key) <= 0:
            problems.append(f"preprocess.{key} must be a positive int")
    if m.mask.resize != "bilinear":
        problems.append(f"mask.resize {m.mask.resize!r}: the mask image encoder input is resized 'bilinear'")
    if min(m.mask.memory_capacity, m.mask.pointer_capacity, m.mask.image_size) <= 0:
        problems.append("mask.memory_capacity, pointer_capacity and image_size must be positive")
    unknown_heads = sorted(set(m.heads.untrained) - set(HEADS))
    if unknown_heads:
        problems.append(f"heads.untrained names unknown heads {unknown_heads}; heads are {HEADS}")
    p = m.prompt
    if not 0 <= p.visual_after_chunk < len(p.chunks) or sum(c.count(p.question_slot) for c in p.chunks) != 1:
        problems.append("prompt.chunks must hold the question slot exactly once and visual_after_chunk must index "
                        "a chunk")
    if m.generation.max_new_tokens <= 0 or not m.generation.stop_ids:
        problems.append("generation.max_new_tokens must be positive and generation.stop_ids non-empty")


def _validate_component(name: str, comp: ComponentSpec, problems: list[str]) -> None:
    for spec in comp.inputs + comp.outputs:
        if spec.dtype not in DTYPES:
            problems.append(f"{name}.{spec.name}: dtype {spec.dtype!r} not in {DTYPES}")
        for d in spec.dims:
            if not (isinstance(d, str) and d) and not (isinstance(d, int) and d > 0):
                problems.append(f"{name}.{spec.name}: dim {d!r} must be a positive int or a dim name")
    symbols = {s for spec in comp.inputs for s in spec.symbols()}
    if not comp.profiles:
        problems.append(f"{name}: no shape profiles")
    for pname, ranges in comp.profiles.items():
        for sym in sorted(symbols - set(ranges)):
            problems.append(f"{name}: profile {pname!r} has no range for dim {sym!r}")
        for sym, r in ranges.items():
            if not (0 <= r[0] <= r[1] <= r[2]) or r[2] == 0:
                problems.append(f"{name}: profile {pname!r} dim {sym!r} range {list(r)} is not "
                                "0 <= min <= opt <= max with max > 0")


def _validate_tokens(m: Manifest, problems: list[str]) -> None:
    roles = {t.role for t in m.task_tokens.values()}
    if not {"begin", "placeholder"} <= roles or not roles <= set(ROLES):
        problems.append(f"task_tokens must hold begin and placeholder tokens (roles {ROLES}), found {sorted(roles)}")
    for token, t in m.task_tokens.items():
        if t.role == "begin":
            ph = m.task_tokens.get(t.placeholder or "")
            if t.head not in HEADS or ph is None or ph.role != "placeholder" or ph.id != t.placeholder_id:
                problems.append(f"task_tokens.{token}: a begin token needs a head in {HEADS} and a placeholder "
                                "token whose id is placeholder_id")
        elif t.role == "placeholder" and t.embedding not in m.tensors:
            problems.append(f"task_tokens.{token}: embedding {t.embedding!r} is not a manifest tensor")
        elif t.role == "input" and not t.embedding_graph:
            problems.append(f"task_tokens.{token}: an input token needs embedding_graph")
    if m.tokenizer.eos_id not in m.generation.stop_ids:
        problems.append("generation.stop_ids must contain tokenizer.eos_id")
