"""``tpo build``: TensorRT / TensorRT-RTX engines for every component of an export folder.

For each component of ``manifest.json``: parse the ONNX file with ``OnnxParser.parse_from_file`` (external data
is found beside it), check the network's IO against the manifest, add one optimization profile per manifest
profile in manifest order (min/opt/max shapes from the symbolic ranges; the LLM's ``prefill`` and ``decode``
become engine profiles 0 and 1), set precision, memory pool, timing cache and progress monitor, serialize
``<component>.engine`` beside the manifest, hash it, and record an :class:`EngineRecord`. The manifest is then
saved and re-loaded through ``Manifest.load`` (validation + hash check of every file).

Precision (see :func:`resolve_precision` and docs/tensorrt.md):
  * full TensorRT 10.x: a graph built in its own precision uses a strongly typed network; an fp32 graph built
    as fp16/bf16 uses a weakly typed network with ``BuilderFlag.FP16``/``BF16``. fp8/int8 need a graph exported
    with Q/DQ nodes (component precision ``fp8``/``int8``); calibration-based INT8 is not supported.
  * TensorRT-RTX: strongly typed only; precision follows the ONNX graph's types, so the requested precision
    must be the component's exported precision.

Every failure raises (``ValueError`` for a request that cannot be met, :class:`EngineBuildError` when TensorRT
fails, naming the ONNX node for parser errors); nothing returns a status flag.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from runtime.manifest import PRECISIONS, ComponentSpec, EngineRecord, Manifest, sha256_file
from runtime.trt_compat import TRT, load_trt

Log = Callable[[str], None]
QUANTIZED = ("int8", "fp8")
# TensorRT-RTX default portable targets (support matrix: Ampere and later) when no compute capability is set.
RTX_DEFAULT_TARGETS = ("sm_80", "sm_86", "sm_89", "sm_120")
_FLAGS = {"fp16": ["FP16"], "bf16": ["BF16"], "fp8": ["FP8", "FP16"], "int8": ["INT8", "FP16"]}
_PLAN_NOTE = ("weight-only INT8 / INT4 engines for Orin are planned (docs/tensorrt.md, 'INT8 / INT4 weight-only "
              "plan'); build with --precision fp16 for now")


class EngineBuildError(RuntimeError):
    """TensorRT could not parse or build a component; ``problems`` holds every reported error."""

    def __init__(self, component: str, stage: str, problems: Sequence[str], hint: str = ""):
        self.component, self.stage, self.problems = component, stage, list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems) or "  - (TensorRT reported no detail)"
        super().__init__(f"{component}: {stage} failed:\n{lines}" + (f"\n{hint}" if hint else ""))


@dataclass
class ComponentBuild:
    component: str
    file: str
    sha256: str
    precision: str
    profiles: list[str]
    size_bytes: int
    seconds: float


@dataclass
class BuildReport:
    """What ``build_engines`` did; ``to_dict()`` is JSON-ready."""

    manifest_dir: str
    builder: str
    builder_version: str
    compute_target: str
    timing_cache: str | None
    components: list[ComponentBuild] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Target:
    """Where engines will run: ``sm`` of the local GPU (full TensorRT) or RTX compute capabilities."""

    compute_target: str
    sm: tuple[int, int] | None = None
    fast_fp16: bool | None = None
    rtx_targets: tuple[str, ...] = ()

    @classmethod
    def detect(cls, trt: TRT, builder: Any, compute_capabilities: Sequence[str] | None) -> Target:
        if trt.is_rtx:
            caps = tuple(_sm_name(c) for c in compute_capabilities or ())
            for c in caps:
                trt.compute_capability(c)  # ValueError listing the allowed ones
            label = "rtx-jit" + (":" + ",".join(caps) if caps else "")
            return cls(label, rtx_targets=caps)
        if compute_capabilities:
            raise ValueError(f"--compute-capability is a TensorRT-RTX option; {trt.name} builds for the GPU it "
                             "runs on (build on the target device, e.g. on the Orin itself).")
        sm = _local_sm()
        return cls(f"sm_{sm[0]}{sm[1]}" if sm else "unknown", sm=sm,
                   fast_fp16=getattr(builder, "platform_has_fast_fp16", None))

    def apply(self, trt: TRT, config: Any) -> None:
        if self.rtx_targets:
            config.num_compute_capabilities = len(self.rtx_targets)
            for i, c in enumerate(self.rtx_targets):
                config.set_compute_capability(trt.compute_capability(c), i)


@dataclass
class PrecisionPlan:
    precision: str
    strongly_typed: bool
    flags: list[str]


def _sm_name(target: str) -> str:
    digits = target.lower().removeprefix("sm_").removeprefix("sm").replace(".", "")
    return f"sm_{digits}"


def _local_sm() -> tuple[int, int] | None:
    try:
        import torch
    except ImportError:
        return None
    return tuple(torch.cuda.get_device_capability()) if torch.cuda.is_available() else None


def resolve_precision(trt: TRT, name: str, spec: ComponentSpec, requested: str | None, target: Target) -> PrecisionPlan:
    """Decide network typing and builder flags, or raise ValueError saying why the precision cannot be built.

    ``spec.precision`` is the precision the ONNX graph was exported in (its float types; ``int8``/``fp8`` mean
    the graph carries Q/DQ nodes). ``requested`` None means "build the graph as exported".
    """
    graph, req = spec.precision, requested or spec.precision
    if req not in PRECISIONS:
        raise ValueError(f"precision {req!r} not in {PRECISIONS}")
    if req in QUANTIZED and graph != req:
        raise ValueError(f"{name}: {req} needs a graph exported with {req.upper()} Q/DQ nodes (component precision "
                         f"{req!r}); this graph is {graph}. Calibration-based quantization is not supported; "
                         f"{_PLAN_NOTE}.")
    sm = target.sm
    if req == "fp8" and sm is not None and sm < (8, 9):
        raise ValueError(f"{name}: fp8 needs sm_89+ (Ada, Hopper, Blackwell); this GPU is sm_{sm[0]}{sm[1]}. "
                         "Orin (sm_87) runs fp16 or int8; build with --precision fp16.")
    if req == "bf16" and sm is not None and sm < (8, 0):
        raise ValueError(f"{name}: bf16 needs Ampere or newer (sm_80+); this GPU is sm_{sm[0]}{sm[1]}. "
                         "Build with --precision fp16.")
    if trt.strongly_typed_only:
        return _strongly_typed_plan(trt, name, graph, req, target)
    if graph in ("fp16", "bf16") and req != graph and req not in QUANTIZED:
        raise ValueError(f"{name}: the graph was exported as {graph}; building it as {req} cannot restore or "
                         f"change its types. Re-export with `tpo export --precision {req}`.")
    if req == graph and req not in QUANTIZED:
        return PrecisionPlan(req, strongly_typed=True, flags=[])
    if req == "fp16" and target.fast_fp16 is False:
        raise ValueError(f"{name}: {trt.name} reports no fast fp16 on this GPU; build with --precision fp32.")
    return PrecisionPlan(req, strongly_typed=False, flags=list(_FLAGS[req]))


def _strongly_typed_plan(trt: TRT, name: str, graph: str, req: str, target: Target) -> PrecisionPlan:
    if req != graph:
        raise ValueError(f"{name}: {trt.name} {trt.version} is strongly typed: precision follows the ONNX graph's "
                         f"types, and this graph was exported as {graph}, so it cannot be built as {req}. Re-export "
                         f"with `tpo export --precision {req}`, or build with --precision {graph}.")
    if trt.is_rtx:
        targets = target.rtx_targets or RTX_DEFAULT_TARGETS
        need = {"bf16": 80, "fp8": 89}.get(req)
        too_old = [t for t in targets if need and int(t.removeprefix("sm_")) < need]
        if too_old:
            raise ValueError(f"{name}: {req} is not supported by TensorRT-RTX on {too_old} (targets: {list(targets)})."
                             f" Pass --compute-capability with sm_{need}+ targets only, or use fp16.")
    return PrecisionPlan(req, strongly_typed=True, flags=[])


# ------------------------------------------------------------------------------------------ TensorRT glue
def _make_logger(trt: TRT, verbose: bool, log: Log) -> Any:
    base = trt.module.ILogger

    class CollectingLogger(base):
        """Forwards warnings (verbose) and errors to ``log``; keeps errors for exception messages."""

        def __init__(self) -> None:
            base.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            level = int(severity)
            if level <= int(base.Severity.ERROR):
                self.errors.append(msg)
            if level <= int(base.Severity.ERROR) or (verbose and level <= int(base.Severity.WARNING)):
                log(f"    [{trt.name}] {msg}")

    return CollectingLogger()


def _make_progress_monitor(trt: TRT, log: Log, max_depth: int = 2) -> Any:
    base = trt.module.IProgressMonitor

    class PhasePrinter(base):
        """Prints builder phases to ``max_depth`` levels, with the time of each top-level phase."""

        def __init__(self) -> None:
            base.__init__(self)
            self.depth: dict[str, int] = {}
            self.started: dict[str, float] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            depth = self.depth.get(parent_phase, -1) + 1 if parent_phase else 0
            self.depth[phase_name], self.started[phase_name] = depth, time.perf_counter()
            if depth < max_depth:
                log(f"    {'  ' * depth}> {phase_name} ({num_steps} steps)")

        def phase_finish(self, phase_name: str) -> None:
            if self.depth.pop(phase_name, 0) == 0:
                log(f"    < {phase_name}: {time.perf_counter() - self.started.pop(phase_name, 0.0):.2f}s")

        def step_complete(self, phase_name: str, step: int) -> bool:
            return True  # False would cancel the build

    return PhasePrinter()


class TimingCache:
    """A persistent timing cache file shared by all components (full TensorRT; a no-op on TensorRT-RTX)."""

    def __init__(self, trt: TRT, path: str | Path | None, log: Log):
        self.trt, self.log = trt, log
        self.path = Path(path) if path else None
        self.data = self.path.read_bytes() if self.path and self.path.is_file() else b""
        if self.path and not trt.has_timing_cache:
            log(f"[tpo build] timing cache {self.path} ignored: {trt.name} timing-cache calls are no-ops")

    @property
    def active(self) -> bool:
        return self.path is not None and self.trt.has_timing_cache

    def attach(self, config: Any) -> None:
        if not self.active:
            return
        cache = config.create_timing_cache(self.data)
        if not config.set_timing_cache(cache, False):
            self.log(f"[tpo build] timing cache {self.path} does not match this TensorRT/GPU; starting a new one")
            config.set_timing_cache(config.create_timing_cache(b""), False)

    def save(self, config: Any) -> None:
        if not self.active:
            return
        self.data = bytes(memoryview(config.get_timing_cache().serialize()))
        _write_atomic(self.path, self.data)


def _write_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def parse_onnx(trt: TRT, builder: Any, logger: Any, name: str, path: Path, strongly_typed: bool) -> tuple[Any, Any]:
    """Parse ``path`` into a new network; returns (network, parser): keep the parser alive until the build ends
    (it owns the weights). Raises EngineBuildError naming every failing node."""
    network = builder.create_network(trt.network_flags(strongly_typed))
    parser = trt.module.OnnxParser(network, logger)
    if not parser.parse_from_file(os.fspath(path)):
        problems = []
        for i in range(parser.num_errors):
            e = parser.get_error(i)
            node = e.node_name() or f"#{e.node()}"
            problems.append(f"node {node!r} ({e.node_operator() or '?'}): {e.desc()} [{e.code()}]")
        raise EngineBuildError(name, f"{trt.name} ONNX parse of {path.name}", problems,
                               "Check the operators against docs/tensorrt.md (opset 17, no complex types) and "
                               "re-export; graph-level rewrites belong in export/ patchers.")
    return network, parser


def check_network_io(trt: TRT, name: str, spec: ComponentSpec, network: Any) -> None:
    """The parsed network's IO (names, ranks, static dims, dtypes) must match the manifest."""
    problems: list[str] = []
    tensors = {network.get_input(i).name: network.get_input(i) for i in range(network.num_inputs)}
    tensors.update({network.get_output(i).name: network.get_output(i) for i in range(network.num_outputs)})
    for kind, specs, count in (("input", spec.inputs, network.num_inputs), ("output", spec.outputs,
                                                                              network.num_outputs)):
        if count != len(specs):
            problems.append(f"network has {count} {kind}s, the manifest {len(specs)}")
        for s in specs:
            t = tensors.get(s.name)
            if t is None:
                problems.append(f"{kind} {s.name!r} is not in the network (has {sorted(tensors)})")
                continue
            dims = list(t.shape)
            if len(dims) != len(s.dims):
                problems.append(f"{kind} {s.name!r}: network rank {len(dims)}, manifest {s.dims}")
            elif kind == "input" and any(isinstance(d, int) and d != n for d, n in zip(s.dims, dims)):
                problems.append(f"{kind} {s.name!r}: network dims {dims}, manifest {s.dims}")
            if t.dtype != trt.dtype(s.dtype):
                problems.append(f"{kind} {s.name!r}: network dtype {t.dtype}, manifest {s.dtype}")
    if problems:
        raise EngineBuildError(name, "network/manifest IO check", problems, "Re-export: graph and manifest disagree.")


def add_profiles(builder: Any, config: Any, name: str, spec: ComponentSpec) -> None:
    """One optimization profile per manifest profile, in manifest order (engine profile i = i-th name)."""
    for i, (pname, ranges) in enumerate(spec.profiles.items()):
        profile = builder.create_optimization_profile()
        for t in spec.inputs:
            if not t.symbols():
                continue
            lo, opt, hi = (t.shape_for({d: r[k] for d, r in ranges.items()}) for k in range(3))
            profile.set_shape(t.name, lo, opt, hi)
        index = config.add_optimization_profile(profile)
        if index != i:
            raise EngineBuildError(name, f"optimization profile {pname!r}", [f"TensorRT returned index {index}, "
                                                                              f"expected {i}: ranges {ranges}"])


def _require_qdq(trt: TRT, name: str, network: Any, precision: str) -> None:
    kinds = {trt.module.LayerType.QUANTIZE, trt.module.LayerType.DEQUANTIZE}
    if not any(network.get_layer(i).type in kinds for i in range(network.num_layers)):
        raise EngineBuildError(name, f"{precision} build", ["the manifest says the graph is quantized, but it has "
                                                            "no QuantizeLinear/DequantizeLinear nodes"],
                               f"Re-export the quantized graph; {_PLAN_NOTE}.")


# ---------------------------------------------------------------------------------------------- build
@dataclass
class _Session:
    """What every component build shares."""

    trt: TRT
    builder: Any
    logger: Any
    target: Target
    cache: TimingCache
    folder: Path
    workspace_gib: float | None
    verbose: bool
    log: Log


def build_component(s: _Session, name: str, spec: ComponentSpec, plan: PrecisionPlan) -> tuple[ComponentBuild,
                                                                                                 EngineRecord]:
    """Parse, configure, build and write ``<name>.engine``; returns the build report and the engine record."""
    t0 = time.perf_counter()
    s.log(f"[tpo build] {name}: parsing {spec.file} ({plan.precision}, profiles {list(spec.profiles)})")
    network, parser = parse_onnx(s.trt, s.builder, s.logger, name, s.folder / spec.file, plan.strongly_typed)
    check_network_io(s.trt, name, spec, network)
    if plan.precision in QUANTIZED:
        _require_qdq(s.trt, name, network, plan.precision)
    config = s.builder.create_builder_config()
    if s.workspace_gib is not None:
        config.set_memory_pool_limit(s.trt.module.MemoryPoolType.WORKSPACE, int(s.workspace_gib * (1 << 30)))
    for flag in plan.flags:
        config.set_flag(s.trt.builder_flag(flag))
    s.target.apply(s.trt, config)
    add_profiles(s.builder, config, name, spec)
    s.cache.attach(config)
    monitor = _make_progress_monitor(s.trt, s.log) if s.verbose and s.trt.has_progress_monitor else None
    if monitor is not None:
        config.progress_monitor = monitor
    s.logger.errors.clear()
    serialized = s.builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(name, f"{s.trt.name} engine build", s.logger.errors[-12:],
                               "Lower --workspace-gib if memory ran out; see docs/tensorrt.md.")
    s.cache.save(config)
    out = s.folder / f"{name}.engine"
    _write_atomic(out, memoryview(serialized))
    del parser, network
    digest, seconds = sha256_file(out), time.perf_counter() - t0
    record = EngineRecord(file=out.name, sha256=digest, builder=s.trt.name, builder_version=s.trt.version,
                          precision=plan.precision, compute_target=s.target.compute_target,
                          profiles=tuple(spec.profiles))
    size = out.stat().st_size
    s.log(f"[tpo build] {name}: {size / 1e6:.2f} MB engine, {len(spec.profiles)} profile(s), "
          f"{plan.precision}, {s.target.compute_target}, {seconds:.2f}s -> {out.name}")
    return ComponentBuild(name, out.name, digest, plan.precision, list(spec.profiles), size, seconds), record


def _load_for_build(folder: Path, rebuild: Sequence[str] | None) -> Manifest:
    """Load the manifest, verifying every file, except engine records of the components about to be rebuilt."""
    path = folder / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"no manifest.json in {folder}; run `tpo export` first")
    data = json.loads(path.read_text())
    for name, comp in data.get("components", {}).items():
        if rebuild is None or name in rebuild:
            comp["engine"] = None
    manifest = dataclasses.replace(Manifest.from_dict(data, path), root=folder)
    manifest.verify_files()
    return manifest


def build_engines(manifest_dir: str | Path, builder: str = "auto", precision: str | None = None,
                  components: Sequence[str] | None = None, timing_cache: str | Path | None = None,
                  workspace_gib: float | None = None, compute_capabilities: Sequence[str] | None = None,
                  verbose: bool = True, log: Log = print) -> BuildReport:
    """Build engines for ``components`` (default: all) of the export in ``manifest_dir``; update its manifest.

    Args:
        builder: "auto" (tensorrt, else tensorrt-rtx), "tensorrt" or "tensorrt-rtx".
        precision: one of ``PRECISIONS``; None builds each component in its exported precision.
        timing_cache: persistent timing-cache file (loaded if present, saved after each component).
        workspace_gib: builder workspace memory-pool limit (None: TensorRT's default, all device memory).
        compute_capabilities: TensorRT-RTX targets, e.g. ["sm_89"]; None: RTX's portable default.
        verbose: print builder phases and TensorRT warnings.

    Returns:
        A :class:`BuildReport`; the manifest on disk then records every engine and has been re-validated.
    """
    t0, folder = time.perf_counter(), Path(manifest_dir)
    trt = load_trt(builder)
    manifest = _load_for_build(folder, components)
    names = list(components or manifest.components)
    unknown = sorted(set(names) - set(manifest.components))
    if unknown:
        raise ValueError(f"unknown component(s) {unknown}; the manifest has {sorted(manifest.components)}")
    logger = _make_logger(trt, verbose, log)
    trt_builder = trt.module.Builder(logger)
    if trt_builder is None:
        raise EngineBuildError("*", f"{trt.name} Builder creation", logger.errors, "Is a CUDA driver installed?")
    target = Target.detect(trt, trt_builder, compute_capabilities)
    plans = {n: resolve_precision(trt, n, manifest.components[n], precision, target) for n in names}  # fail fast
    session = _Session(trt, trt_builder, logger, target, TimingCache(trt, timing_cache, log), folder,
                       workspace_gib, verbose, log)
    report = BuildReport(str(folder), trt.name, trt.version, target.compute_target,
                         str(timing_cache) if session.cache.active else None)
    log(f"[tpo build] {folder}: {len(names)} component(s) with {trt.name} {trt.version} for {target.compute_target}")
    for name in names:
        built, record = build_component(session, name, manifest.components[name], plans[name])
        report.components.append(built)
        manifest = manifest.with_component(name, dataclasses.replace(manifest.components[name], engine=record))
    manifest.save(folder)
    Manifest.load(folder)  # re-validate what was written, hashes included
    report.seconds = time.perf_counter() - t0
    log(f"[tpo build] done: {len(names)} engine(s) in {report.seconds:.1f}s; manifest updated")
    return report


# ------------------------------------------------------------------------------------------------ CLI
def add_build_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``tpo build`` on an ``argparse`` subparsers object."""
    p = subparsers.add_parser("build", help="build TensorRT / TensorRT-RTX engines for an export folder",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("dir", help="export folder holding manifest.json")
    p.add_argument("--builder", choices=("auto", "tensorrt", "tensorrt-rtx"), default="auto",
                   help="auto: tensorrt if importable, else tensorrt-rtx")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="default: each component's exported precision (TensorRT-RTX accepts only that)")
    p.add_argument("--components", nargs="+", default=None, help="component names (default: all)")
    p.add_argument("--timing-cache", default=None, help="persistent timing-cache file (full TensorRT)")
    p.add_argument("--workspace-gib", type=float, default=None, help="builder workspace limit in GiB")
    p.add_argument("--compute-capability", dest="compute_capabilities", nargs="+", default=None,
                   help="TensorRT-RTX targets, e.g. sm_89 sm_120 (default: portable Ampere+)")
    p.add_argument("--report", default=None, help="also write the build report as JSON here")
    p.add_argument("--quiet", action="store_true", help="only one line per component")
    p.set_defaults(func=run_build)
    return p


def run_build(args: argparse.Namespace) -> int:
    report = build_engines(args.dir, builder=args.builder, precision=args.precision, components=args.components,
                           timing_cache=args.timing_cache, workspace_gib=args.workspace_gib,
                           compute_capabilities=args.compute_capabilities, verbose=not args.quiet)
    if args.report:
        Path(args.report).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    print(json.dumps({"builder": report.builder, "version": report.builder_version, "target": report.compute_target,
                      "engines": len(report.components), "seconds": round(report.seconds, 2)}))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tpo")
    add_build_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
