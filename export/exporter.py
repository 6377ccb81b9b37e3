"""``export_model``: a TPO checkpoint -> one folder of ONNX graphs, tensor files, tokenizer and ``manifest.json``.

Folder layout (``<c>`` = component name, see ``tpo_core/export_specs.py`` and ``export/components.py``)::

    manifest.json            the only contract with runtime/ (runtime/manifest.py)
    <c>.onnx [+ <c>.onnx.data]  one graph per component (external data when the weights exceed 256 MB)
    embed_tokens.npy         LLM token-embedding table [V, D] (bfloat16 stored as its uint16 bit pattern)
    box_token.npy, temporal_token.npy, track_token.npy   task embeddings [D] forced at the placeholders
    mask_no_prompt.npy       the mask decoder's sparse prompt on tracking frames [2, C]
    tokenizer.json           the checkpoint's tokenizer
    export_report.json       per-component export seconds and sizes, peak RSS (not part of the contract)

Memory: a checkpoint folder is loaded on the ``meta`` device and its tensors are *assigned* (no random init,
no second copy); LoRA is merged in place; the wrappers share the weights; the dynamo exporter references
the parameters lazily and streams them to the file on save. Peak RSS is about one copy of the weights in
the export precision plus the largest graph's tracing overhead (see docs/export.md for measurements).
"""

from __future__ import annotations

import contextlib
import json
import logging
import resource
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
import torch

from export import DEFAULT_OPSET, EXPORTERS, LLM_GRAPHS
from export.components import build_wrapper
from export.llm_gqa import export_llm_gqa, float_precision
from export.patchers import frame_patch_embed
from export.specs import (
    DTYPE_NAMES,
    ONNX_DTYPES,
    PRECISION_DTYPES,
    ExportError,
    as_args,
    check_onnx_io,
    check_precision,
    component_spec,
    dtype_of,
    dynamic_shapes,
    example_inputs,
    name_dims,
    to_numpy,
)
from runtime.manifest import REQUIRED_COMPONENTS, SCHEMA, SCHEMA_VERSION, Manifest, SourceInfo, TensorFile, sha256_file
from tpo_core import __version__
from tpo_core.export_specs import (
    PREFILL_TEXT_TOKENS,
    ComponentIO,
    ExportLimits,
    component_io,
    manifest_sections,
    tensor_files,
    tokenizer_section,
)
from tpo_core.modeling.heads.pointer import patch_centres

# graphs with more weight bytes than this use ONNX external data (required over 2 GB). Measured on the 7B vision
# graph (0.79 GB fp16): inline, the exporter serializes the weights in memory (peak RSS +2.4 GB); external data
# streams them (+0.12 GB).
EXTERNAL_DATA_BYTES = 256 * 2**20
Log = Callable[[str], None]


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MB (Linux ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ------------------------------------------------------------------------------------------- loading
def restore_buffers(model, force: bool = False, allow_meta: bool = False) -> None:
    """Recompute the non-persistent buffers a model built on ``meta`` lacks (``force``: also after ``to_empty``,
    which leaves them uninitialized); raise if any meta tensor is left (unless ``allow_meta``: parts left on
    purpose, e.g. components a measurement does not export)."""
    lm = model.llm.base_model()
    rot = lm.model.rotary_emb
    if force or any(b.is_meta for b in rot.buffers()):
        with torch.device("cpu"):
            lm.model.rotary_emb = type(rot)(config=lm.config)
    mh = model.mask_head
    if force or mh.pixel_mean.is_meta:
        from tpo_core.config import IMAGENET_MEAN, IMAGENET_STD

        mh.pixel_mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        mh.pixel_std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    mattn = mh.sam.memory_attention
    if force or mattn.position_ids.is_meta or any(b.is_meta for b in mattn.rotary_emb.buffers()):
        with torch.device("cpu"):
            mattn.rotary_emb = type(mattn.rotary_emb)(mh.sam_config)
            mattn.position_ids = mattn.precompute_positions(mh.sam_config)
    if force and not model.vision.pos_embed.is_meta:
        model.vision.reset_pos_embed()
    for head in (model.region_head, mh):  # the pointer heads' patch-centre table (config.pointer)
        pointer = getattr(head, "pointer", None)
        if pointer is not None and (force or pointer.centres.is_meta):
            pointer.centres = patch_centres(pointer.side)
    objects = model.connector.objects  # the object tokens' patch-centre table (config.qformer.object_tokens)
    if objects is not None and (force or objects.xy.is_meta):
        objects.xy = patch_centres(objects.side)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left and not allow_meta:
        raise RuntimeError(f"tensors still on the meta device after loading: {left[:8]}; "
                           "export/exporter.py:restore_buffers needs to learn how to rebuild them")


def fill_random(module: torch.nn.Module, gen: torch.Generator, fill: Callable) -> None:
    """Random weights for a module materialized from ``meta`` (``to_empty``), for measurements of random models:
    norm weights 1, biases 0, every other parameter and floating buffer ``fill(tensor, gen)`` in place
    (``restore_buffers`` then recomputes the non-persistent buffers)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() == 1 and "norm" in name.lower() and name.endswith("weight"):
                p.fill_(1.0)
            elif name.endswith("bias"):
                p.zero_()
            else:
                fill(p, gen)
        for b in module.buffers():
            if b.is_floating_point():
                fill(b, gen)


def load_for_export(path: str | Path, dtype: torch.dtype):
    """A checkpoint folder -> TPOModel in ``dtype``, LoRA merged, without random init or a second weight copy."""
    from safetensors.torch import load_file

    from tpo_core.checkpoint import CONFIG, META, TOKENIZER, WEIGHTS, CheckpointError
    from tpo_core.config import TPOConfig
    from tpo_core.data.tokenizer_build import load_tokenizer
    from tpo_core.model import TPOModel

    path = Path(path)
    for name in (WEIGHTS, CONFIG, META):
        if not (path / name).is_file():
            raise CheckpointError(f"checkpoint {path} lacks {name}; pass a folder written by `tpo train` or "
                                  "TPOModel.save_pretrained, or 'embedded' / 'untrained-tiny'")
    meta = json.loads((path / META).read_text())
    config = TPOConfig.from_json(path / CONFIG)
    tokenizer = load_tokenizer(str(path)) if (path / TOKENIZER).is_file() else load_tokenizer(config.llm.tokenizer)
    with torch.device("meta"):
        model = TPOModel(config, tokenizer)
        if meta.get("lora_applied"):
            model.llm.apply_lora()
    state = load_file(str(path / WEIGHTS))
    for k in list(state):  # cast one tensor at a time: never two full copies
        if state[k].is_floating_point():
            state[k] = state[k].to(dtype)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path} does not match the model built from its config: {e}") from e
    del state
    restore_buffers(model)
    model.llm.merge_lora()
    model.untrained_heads = tuple(meta.get("untrained_heads", ()))  # for the manifest (e.g. ["temporal"])
    return model.eval()


def load_source(checkpoint: str | Path, dtype: torch.dtype = torch.float32):
    """'embedded', 'untrained-tiny' or a folder -> (TPOModel in ``dtype``, LoRA merged; source record)."""
    from tpo_core.checkpoint import EMBEDDED_DEFAULT, checkpoint_hash
    from tpo_core.model import load_model

    spec = str(checkpoint)
    folder = EMBEDDED_DEFAULT if spec == "embedded" else Path(spec)
    if spec == "untrained-tiny" or (spec == "embedded" and not (folder / "model.safetensors").is_file()):
        model = load_model("untrained-tiny").to(dtype)
        model.llm.merge_lora()
        source = {"checkpoint": "untrained-tiny", "sha256": None}
    else:
        model = load_for_export(folder, dtype)
        source = {"checkpoint": spec if spec == "embedded" else str(folder.resolve()),
                  "sha256": checkpoint_hash(folder)}
    source.update(preset=model.config.preset, config=model.config.to_dict(),
                  tokenizer_sha256=tokenizer_hash(model.tokenizer))
    return model.eval(), source


def tokenizer_hash(tokenizer) -> str | None:
    """sha256 of the tokenizer's JSON (None without a tokenizer): detects a tokenizer changed since export."""
    import hashlib

    return None if tokenizer is None else hashlib.sha256(tokenizer.to_str().encode()).hexdigest()


# ------------------------------------------------------------------------------------------- graphs
def _weight_bytes(module: torch.nn.Module) -> int:
    seen, total = set(), 0
    for t in [*module.parameters(), *module.buffers()]:
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def export_component(model, cio: ComponentIO, out: Path, precision: str, opset: int, log: Log,
                     exporter: str = "dynamo") -> dict:
    """Trace one wrapper with ``exporter``, save ``<name>.onnx``, check its IO against ``cio``.

    ``dynamo`` (default): ``torch.export`` + the ONNX translator with its optimizer; handles external data for
    graphs over 2 GB. ``torchscript``: the TorchScript tracer (``dynamo=False``), about 20x faster on the
    tiny model (2.9 s vs 57 s for all ten graphs on 2 cores); it records shapes as graph ops, and
    ``tpo verify`` checks every profile corner of its graphs like any other export.
    """
    if exporter not in EXPORTERS:
        raise ValueError(f"unknown exporter {exporter!r}; choose one of {EXPORTERS}")
    if exporter == "torchscript" and precision != "fp32":
        # measured: the tracer keeps float32 constants of the temporal head in an fp16 graph, which ONNX Runtime
        # refuses to load (LayerNormalization bound to float and float16); dynamo's type promotion is right
        raise ValueError(f"the torchscript exporter writes fp32 graphs only (got --precision {precision}); use "
                         "--exporter dynamo (the default) for fp16/bf16")
    dtype = check_precision(precision)
    t0 = time.perf_counter()
    wrapper = build_wrapper(cio.name, model, dtype)
    args = as_args(cio, example_inputs(cio, precision))
    external = _weight_bytes(wrapper) > EXTERNAL_DATA_BYTES
    path = out / f"{cio.name}.onnx"
    data = out / f"{cio.name}.onnx.data"
    for p in (path, data):
        p.unlink(missing_ok=True)
    # torch's ONNX registry logs one warning per torchvision op when torchvision is absent: not our ops, noise
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    patch = frame_patch_embed(model.vision) if cio.name == "vision" else contextlib.nullcontext()
    with patch:  # export-only rewrites (export/patchers.py)
        if exporter == "torchscript":
            _export_torchscript(wrapper, args, cio, path, opset, external)
        else:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*axis name.*will not be used")  # shared Dim names
                program = torch.onnx.export(wrapper, args, dynamo=True, input_names=cio.input_names(),
                                            output_names=cio.output_names(), dynamic_shapes=dynamic_shapes(cio),
                                            opset_version=opset, verbose=False, optimize=True)
            program.save(str(path), external_data=external)
            del program
    proto = onnx.load(str(path), load_external_data=False)
    if exporter == "torchscript":
        _restore_spec_io(proto, cio, precision)
    name_dims(proto, cio)
    check_onnx_io(proto, cio, precision)
    onnx.save(proto, str(path))
    seconds = time.perf_counter() - t0
    size = path.stat().st_size + (data.stat().st_size if data.is_file() else 0)
    log(f"[tpo export] {cio.name}: {size / 1e6:.2f} MB{' (+external data)' if external else ''}, "
        f"{seconds:.1f}s, peak RSS {peak_rss_mb():.0f} MB")
    return {"file": path.name, "external_data": data.name if data.is_file() else None, "seconds": seconds,
            "bytes": size, "peak_rss_mb": peak_rss_mb(), "exporter": exporter}


def _export_torchscript(wrapper, args: tuple, cio: ComponentIO, path: Path, opset: int, external: bool) -> None:
    """The TorchScript tracer path: symbolic dims become ``dynamic_axes`` (same names as the spec)."""
    dynamic_axes = {}
    for spec in (*cio.inputs, *cio.outputs):
        axes = {i: d for i, d in enumerate(spec.dims) if isinstance(d, str)}
        if axes:
            dynamic_axes[spec.name] = axes
    with torch.no_grad(), warnings.catch_warnings():
        # the tracer warns about every Python-level shape read; tpo verify runs each profile's corners instead
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        torch.onnx.export(wrapper, args, str(path), dynamo=False, input_names=cio.input_names(),
                          output_names=cio.output_names(), dynamic_axes=dynamic_axes, opset_version=opset)
    if external:  # the tracer writes weights inline; move them out as the dynamo path does
        onnx.save(onnx.load(str(path)), str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=path.name + ".data")


def _restore_spec_io(proto: onnx.ModelProto, cio: ComponentIO, precision: str) -> None:
    """Make a traced graph's IO declare what the spec says (the tracer's two gaps), in place."""
    # the tracer drops inputs the graph never reads (e.g. pointer_offsets when pointer temporal encoding is off);
    # the spec's IO is the contract, so they are declared again, unused, as the dynamo exporter keeps them
    present = {vi.name for vi in proto.graph.input}
    for i, spec in enumerate(cio.inputs):
        if spec.name not in present:
            vi = onnx.helper.make_tensor_value_info(spec.name, ONNX_DTYPES[dtype_of(spec, precision)], list(spec.dims))
            proto.graph.input.insert(i, vi)
    # the tracer's shape inference leaves some static output dims symbolic (e.g. 'Addvisual_tokens_dim_1');
    # declare the spec's sizes there (tpo verify compares every output's real shape with PyTorch's)
    by_name = {spec.name: spec for spec in cio.outputs}
    for vi in proto.graph.output:
        for d, want in zip(vi.type.tensor_type.shape.dim, by_name[vi.name].dims if vi.name in by_name else ()):
            if isinstance(want, int) and not d.HasField("dim_value"):
                d.dim_value = want


def write_tensors(model, out: Path, precision: str) -> dict[str, TensorFile]:
    """The ``.npy`` tensor files of ``tensor_files(config)``; returns the manifest's ``tensors`` entries."""
    dtype = check_precision(precision)
    llm = model.llm
    values = {
        "embed_tokens": llm.base_model().get_input_embeddings().weight,
        "box_token": llm.box_token[0, 0], "temporal_token": llm.temporal_token[0, 0],
        "track_token": llm.track_token[0, 0], "mask_no_prompt": model.mask_head.no_prompt(1)[0],
    }
    entries = {}
    for spec in tensor_files(model.config):
        t = values[spec.name].detach().to(dtype)
        assert tuple(t.shape) == spec.shape, f"{spec.name}: shape {tuple(t.shape)} != declared {spec.shape}"
        path = out / f"{spec.name}.npy"
        np.save(path, to_numpy(t))
        dtype_name = str(t.dtype).removeprefix("torch.")
        entries[spec.name] = TensorFile(file=path.name, sha256=sha256_file(path), dtype=dtype_name, shape=spec.shape,
                                        storage="uint16 bit pattern" if t.dtype == torch.bfloat16 else dtype_name,
                                        doc=spec.doc)
    return entries


def build_manifest(model, source: dict, precision: str, opset: int, specs: dict, tensors: dict[str, TensorFile],
                   out: Path, kv_graph: str = "past-present") -> Manifest:
    """The typed manifest of an export folder (writes ``tokenizer.json`` first: its hash is part of it)."""
    if model.tokenizer is None:
        raise ValueError("the model has no tokenizer; export a checkpoint folder (it holds tokenizer.json)")
    model.tokenizer.save(str(out / "tokenizer.json"))
    tokenizer = tokenizer_section(model.tokenizer, "tokenizer.json", sha256_file(out / "tokenizer.json"))
    kv_dtype = specs["llm"].input("past_key_0").dtype if "llm" in specs else DTYPE_NAMES[check_precision(precision)]
    sections = manifest_sections(model.config, tokenizer, model.task_ids.by_token(), kv_dtype, kv_graph,
                                 untrained_heads=tuple(getattr(model, "untrained_heads", ())))
    src = SourceInfo(checkpoint=str(source["checkpoint"]), sha256=source["sha256"], preset=source["preset"],
                     config=source["config"], tokenizer_sha256=source["tokenizer_sha256"], exporter=source["exporter"])
    return Manifest(schema=SCHEMA, schema_version=SCHEMA_VERSION, toolkit_version=__version__, source=src,
                    precision=precision, opset=opset, components=specs, tensors=tensors, **sections)


# ------------------------------------------------------------------------------------------- entry point
def export_model(checkpoint: str | Path, out: str | Path, precision: str = "fp32", opset: int = DEFAULT_OPSET,
                 components: Sequence[str] | None = None, limits: ExportLimits | None = None, model=None,
                 source: dict | None = None, log: Log = print, exporter: str = "dynamo", llm_graph: str = "plain",
                 llm_target: str | None = None) -> Manifest:
    """Export every component (or ``components``) of ``checkpoint`` to ``out``; returns the reloaded manifest.

    checkpoint: a checkpoint folder, 'embedded' or 'untrained-tiny' (ignored when ``model`` is given).
    precision: fp32 | fp16 | bf16 (weights, activations and KV in that type; logits float32); with
        ``llm_graph="gqa"`` also int4 | int8: weight-only MatMulNBits LLM, every other graph (and the LLM's
        activations and KV) in ``export.llm_gqa.float_precision(precision, llm_target)`` (fp16 for CUDA).
    exporter: ``dynamo`` (default) or ``torchscript`` (see ``export_component``).
    llm_graph: ``plain`` (past/present graph of ``export/llm_graph.py``: any provider, TensorRT) or ``gqa``
        (``export/llm_gqa.py``: GroupQueryAttention on a shared KV buffer, for ORT CUDA / CPU; needs
        onnxruntime-genai's builder). ``llm_target``: the gqa builder's provider (cuda | cpu; default by precision).
    A partial export (``components``) writes a manifest that loads only with ``Manifest.load(dir,
    require_all=False)``; it is meant for measurements such as ``scripts/export_7b.py``.
    """
    t0 = time.perf_counter()
    if llm_graph not in LLM_GRAPHS:
        raise ValueError(f"unknown llm_graph {llm_graph!r}; choose one of {LLM_GRAPHS}")
    if llm_graph == "plain" and precision not in PRECISION_DTYPES:
        raise ValueError(f"precision {precision!r} needs --llm-graph gqa (weight-only MatMulNBits); the plain graph "
                         f"exports {sorted(PRECISION_DTYPES)}")
    fprec = float_precision(precision, llm_target) if llm_graph == "gqa" else precision
    dtype = check_precision(fprec)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if model is None:
        model, source = load_source(checkpoint, dtype)
    else:
        model.llm.merge_lora()
        model = model.to(dtype).eval()
        source = source or {"checkpoint": "in-memory", "sha256": None, "preset": model.config.preset,
                            "config": model.config.to_dict(), "tokenizer_sha256": tokenizer_hash(model.tokenizer)}
    log(f"[tpo export] {source['checkpoint']} ({model.config.preset}, {precision}, opset {opset}, {exporter}) "
        f"-> {out}; loaded in {time.perf_counter() - t0:.1f}s, peak RSS {peak_rss_mb():.0f} MB")
    source = {**source, "exporter": exporter}
    ios = component_io(model.config, limits)
    names = list(components or ios)
    unknown = sorted(set(names) - set(ios))
    if unknown:
        raise ValueError(f"unknown component(s) {unknown}; components: {list(ios)}")
    report, specs = {}, {}
    for name in names:
        if name == "llm" and llm_graph == "gqa":
            limits = limits or ExportLimits()
            report[name], specs[name] = export_llm_gqa(
                model, out, precision, model.config.llm.max_context, limits.max_batch,
                limits.prefill_opt or model.config.qformer.num_queries + PREFILL_TEXT_TOKENS, llm_target, log)
            continue
        rec = export_component(model, ios[name], out, fprec, opset, log, exporter)
        report[name] = rec
        ext = rec["external_data"]
        specs[name] = component_spec(ios[name], rec["file"], sha256_file(out / rec["file"]), fprec,
                                     external_data=ext, external_data_sha256=sha256_file(out / ext) if ext else None)
    kv_graph = "gqa" if llm_graph == "gqa" and "llm" in specs else "past-present"
    manifest = build_manifest(model, source, precision, opset, specs, write_tensors(model, out, fprec), out, kv_graph)
    manifest.save(out)
    total = time.perf_counter() - t0
    (out / "export_report.json").write_text(json.dumps(
        {"seconds": total, "peak_rss_mb": peak_rss_mb(), "components": report}, indent=2) + "\n")
    log(f"[tpo export] done: {len(names)} graph(s) in {total:.1f}s, peak RSS {peak_rss_mb():.0f} MB")
    return Manifest.load(out, require_all=set(REQUIRED_COMPONENTS) <= set(specs))


__all__ = ["DEFAULT_OPSET", "EXPORTERS", "LLM_GRAPHS", "ExportError", "export_model", "export_component",
           "load_for_export", "load_source", "restore_buffers", "write_tensors", "peak_rss_mb"]
