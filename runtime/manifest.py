"""The manifest: the only contract between ``export/`` (writer) and ``runtime/`` (reader).

``manifest.json`` in an export folder describes every component graph (file, sha256, typed IO, shape
profiles, precision, built engines), the tensor files the runtime gathers from (token-embedding table,
task embeddings, ...), the tokenizer, task tokens, prompt template, preprocessing constants, KV layout,
mask memory capacity and head post-processing constants. It is versioned and validated on read: every
problem is collected and raised together in one :class:`ManifestError`.

Tensor dims are ints (static) or names (symbolic). A component's ``profiles`` map a profile name
(``default``; the LLM has ``prefill`` and ``decode``) to ``{dim_name: [min, opt, max]}`` for every
symbolic dim used by its inputs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import MISSING, asdict, dataclass, field
from pathlib import Path
from typing import Any

SCHEMA = "tpo-edge/manifest"
SCHEMA_VERSION = 1
DTYPES = ("float32", "float16", "bfloat16", "int64", "int32", "bool", "uint8")
PRECISIONS = ("fp32", "fp16", "bf16", "fp8", "int8", "int4")  # graph types; int8/fp8 mean Q/DQ nodes
HEADS = ("region", "temporal", "mask")


class ManifestError(ValueError):
    """A manifest that cannot be used; ``problems`` lists every issue found."""

    def __init__(self, path: str | Path, problems: list[str]):
        self.path, self.problems = str(path), list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"manifest {self.path} is not usable:\n{lines}\nRe-export with `tpo export` "
                         "(and `tpo build` for engines) using this toolkit version.")


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass
class TensorSpec:
    """One graph input or output: ``dims`` entries are ints (static) or symbolic dim names."""

    name: str
    dtype: str
    dims: list[int | str]
    doc: str = ""

    def validate(self, where: str, problems: list[str]) -> None:
        if self.dtype not in DTYPES:
            problems.append(f"{where}.{self.name}: dtype {self.dtype!r} not in {DTYPES}")
        for d in self.dims:
            if not (isinstance(d, str) and d) and not (isinstance(d, int) and d > 0):
                problems.append(f"{where}.{self.name}: dim {d!r} must be a positive int or a dim name")

    def symbols(self) -> list[str]:
        return [d for d in self.dims if isinstance(d, str)]

    def shape_for(self, bindings: dict[str, int]) -> tuple[int, ...]:
        return tuple(d if isinstance(d, int) else int(bindings[d]) for d in self.dims)


@dataclass
class EngineRecord:
    """A built TensorRT(-RTX) engine for one component."""

    file: str
    sha256: str
    builder: str  # "tensorrt" or "tensorrt-rtx"
    builder_version: str
    precision: str
    # "sm_XY" (full TensorRT, e.g. sm_87 Orin, sm_90 H100), "rtx-jit" or "rtx-jit:sm_89,..." (TensorRT-RTX),
    # "unknown" when the GPU could not be queried
    compute_target: str
    profiles: list[str] = field(default_factory=list)


@dataclass
class ComponentSpec:
    file: str
    sha256: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    profiles: dict[str, dict[str, list[int]]]
    precision: str = "fp32"  # the exported graph's types
    external_data: str | None = None  # ONNX external-data file (graphs > 2 GB), relative to the manifest
    external_data_sha256: str | None = None
    tolerance: dict[str, float] = field(default_factory=dict)  # output name -> max abs error allowed
    engine: EngineRecord | None = None
    doc: str = ""

    def input(self, name: str) -> TensorSpec:
        for t in self.inputs:
            if t.name == name:
                return t
        raise KeyError(f"no input {name!r}; inputs are {[t.name for t in self.inputs]}")

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
                return f"{spec.name} has rank {len(shape)}, expected {len(spec.dims)} {spec.dims}"
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


@dataclass
class Manifest:
    """Parsed, validated ``manifest.json``. ``root`` is the folder it was read from."""

    toolkit_version: str
    source: dict[str, Any]
    precision: str
    opset: int
    components: dict[str, ComponentSpec]
    tensors: dict[str, dict[str, Any]]  # name -> {"file", "sha256", "dtype", "shape", "doc"}
    tokenizer: dict[str, Any]  # {"files": [...], "bos_id", "eos_id", "pad_id", "bos_per_chunk"}
    task_tokens: dict[str, dict[str, Any]]  # token -> {"id", "role", "head"?, "placeholder"?, "embedding"?}
    prompt: dict[str, Any]  # {"chunks": [...], "visual_tokens", "system_message", "time_words", ...}
    preprocess: dict[str, Any]  # {"num_frames", "sampling", "size", "mean", "std", "resize"}
    kv: dict[str, Any]  # {"layers", "kv_heads", "head_dim", "max_context", "dtype"}
    mask: dict[str, Any]  # {"image_size", "low_res", "memory_capacity", "mem_dim", ...}
    heads: dict[str, dict[str, Any]]  # head -> post-processing constants
    generation: dict[str, Any] = field(default_factory=dict)  # {"max_new_tokens", "stop_ids"}
    schema: str = SCHEMA
    schema_version: int = SCHEMA_VERSION
    root: Path | None = None

    REQUIRED_COMPONENTS = ("vision", "llm", "head_region", "head_temporal", "mask_image_encoder", "mask_decoder",
                           "mask_memory_attention", "mask_memory_encoder")

    def path_of(self, relative: str) -> Path:
        assert self.root is not None, "manifest has no root folder; load it with Manifest.load(dir)"
        return self.root / relative

    def to_dict(self) -> dict:
        data = asdict(self)
        data.pop("root")
        return data

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / "manifest.json"
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, folder: str | Path, verify_hashes: bool = True, require_all: bool = True,
             verify_engines: bool = True) -> Manifest:
        """Read and validate ``manifest.json`` in ``folder``.

        require_all: every component in ``REQUIRED_COMPONENTS`` must be present (False for partial exports).
        verify_engines: also check built engine files (False when rebuilding them).
        """
        folder = Path(folder)
        path = folder / "manifest.json" if folder.is_dir() else folder
        if not path.is_file():
            raise FileNotFoundError(f"no manifest.json at {path}; point to a folder written by `tpo export`")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ManifestError(path, [f"not valid JSON: {e}"]) from e
        manifest = cls.from_dict(data, path, require_all=require_all)
        manifest.root = path.parent
        manifest.verify_files(verify_hashes, verify_engines=verify_engines)
        return manifest

    @classmethod
    def from_dict(cls, data: dict, path: str | Path = "<dict>", require_all: bool = True) -> Manifest:
        problems: list[str] = []
        if data.get("schema") != SCHEMA:
            problems.append(f"schema is {data.get('schema')!r}, expected {SCHEMA!r}")
        if data.get("schema_version") != SCHEMA_VERSION:
            problems.append(f"schema_version is {data.get('schema_version')!r}; this runtime reads "
                            f"{SCHEMA_VERSION}")
        if problems:
            raise ManifestError(path, problems)
        fields = {k: f for k, f in cls.__dataclass_fields__.items() if k != "root"}
        missing = sorted(k for k, f in fields.items()
                         if k not in data and f.default is MISSING and f.default_factory is MISSING)
        known = set(fields)
        unknown = sorted(set(data) - known)
        problems += [f"missing key {k!r}" for k in missing] + [f"unknown key {k!r}" for k in unknown]
        if problems:
            raise ManifestError(path, problems)
        comps = {}
        for name, c in data["components"].items():
            try:
                comps[name] = _component_from_dict(c)
            except (TypeError, KeyError) as e:
                problems.append(f"component {name!r} is malformed: {e}")
        if problems:
            raise ManifestError(path, problems)
        manifest = cls(**{**data, "components": comps})
        manifest._validate(problems, require_all)
        if problems:
            raise ManifestError(path, problems)
        return manifest

    def _validate(self, problems: list[str], require_all: bool = True) -> None:
        if self.precision not in PRECISIONS:
            problems.append(f"precision {self.precision!r} not in {PRECISIONS}")
        for name in self.REQUIRED_COMPONENTS if require_all else ():
            if name not in self.components:
                problems.append(f"component {name!r} is missing")
        for name, comp in self.components.items():
            for spec in comp.inputs + comp.outputs:
                spec.validate(name, problems)
            symbols = {s for spec in comp.inputs for s in spec.symbols()}
            if not comp.profiles:
                problems.append(f"{name}: no shape profiles")
            for pname, ranges in comp.profiles.items():
                for sym in sorted(symbols - set(ranges)):
                    problems.append(f"{name}: profile {pname!r} has no range for dim {sym!r}")
                for sym, r in ranges.items():
                    if len(r) != 3 or not (0 <= r[0] <= r[1] <= r[2]) or r[2] == 0:
                        problems.append(f"{name}: profile {pname!r} dim {sym!r} range {r} is not "
                                        "0 <= min <= opt <= max with max > 0")
        roles = {v.get("role") for v in self.task_tokens.values()}
        if not {"begin", "placeholder"} <= roles:
            problems.append(f"task_tokens must hold begin and placeholder tokens, roles found: {sorted(roles)}")
        for key in ("layers", "kv_heads", "head_dim", "max_context"):
            if not isinstance(self.kv.get(key), int) or self.kv[key] <= 0:
                problems.append(f"kv.{key} must be a positive int, got {self.kv.get(key)!r}")

    def verify_files(self, verify_hashes: bool = True, verify_engines: bool = True) -> None:
        """Check that every referenced file exists and (optionally) matches its sha256."""
        problems = []
        entries = [(f"component {n}", c.file, c.sha256) for n, c in self.components.items()]
        entries += [(f"external data of {n}", c.external_data, c.external_data_sha256)
                    for n, c in self.components.items() if c.external_data]
        if verify_engines:
            entries += [(f"engine {n}", c.engine.file, c.engine.sha256) for n, c in self.components.items()
                        if c.engine]
        entries += [(f"tensor {n}", t["file"], t["sha256"]) for n, t in self.tensors.items()]
        for what, rel, digest in entries:
            p = self.path_of(rel)
            if not p.is_file():
                problems.append(f"{what}: file {rel} is missing")
            elif verify_hashes and digest and sha256_file(p) != digest:
                problems.append(f"{what}: file {rel} changed since export (sha256 mismatch)")
        for rel in self.tokenizer.get("files", []):
            if not self.path_of(rel).is_file():
                problems.append(f"tokenizer file {rel} is missing")
        if problems:
            raise ManifestError(self.path_of("manifest.json"), problems)


def _component_from_dict(c: dict) -> ComponentSpec:
    c = dict(c)
    c["inputs"] = [TensorSpec(**t) for t in c["inputs"]]
    c["outputs"] = [TensorSpec(**t) for t in c["outputs"]]
    if c.get("engine"):
        c["engine"] = EngineRecord(**c["engine"])
    return ComponentSpec(**c)
