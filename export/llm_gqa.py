"""The LLM graph made for the GPU (``tpo export --llm-graph gqa``): ONNX Runtime GenAI's model builder on the
LoRA-merged Mistral weights, post-processed into the tpo-edge contract.

The builder (onnxruntime-genai 0.18, ``export/genai_builder.py``) writes the decoder that ONNX Runtime GenAI itself
runs: ``GroupQueryAttention`` reading and writing ONE preallocated KV buffer per tensor in place (past and present
bound to the same memory: no concat, no materialized scores; flash attention on CUDA), RoPE fused into the
attention op (cos/sin caches in the graph, positions from the attention mask), ``SkipSimplifiedLayerNormalization``
for every residual + RMSNorm, one packed QKV MatMul per layer, and ``MatMulNBits`` (4 or 8 bit, block 32) for
int4/int8 weights. Options passed: ``exclude_embeds`` (the runtime gathers rows and splices visual tokens and task
embeddings), ``include_hidden_states`` (the output of the final RMSNorm, the same tensor as ``LLMGraph``'s
``hidden_states``: the heads' input), ``prune_lm_head`` (logits of the last position only).

``finish_graph`` then renames the IO to the manifest's names, turns ``logits [B, 1, V]`` into ``[B, V]`` float32,
and adds ``next_token = ArgMax(logits)`` so that greedy decoding reads back one int64 instead of the logits.

ONNX IO (``F`` = float16 for fp16/int4/int8 (CUDA target), float32 for fp32 (CPU target); ``C`` = ``kv.max_context``;
``KVH`` kv heads, ``Hd`` head dim, ``V`` = base vocab + 7 task tokens):

=================  =====================  =======  ===========================================================
name               shape                  dtype    meaning
=================  =====================  =======  ===========================================================
inputs_embeds      [batch, seq, D]        F        embeddings of the new tokens
attention_mask     [batch, total]         int64    1 for the cached + new positions, then 0. ``seqlens_k =
                                                   sum - 1``; new token i sits at position ``sum - seq + i``.
                                                   Decode under CUDA graphs binds the whole [1, C] buffer.
past_key_i         [batch, KVH, C, Hd]    F        the KV buffer of layer i; bind the SAME memory as
past_value_i                                       present_key_i / present_value_i: written in place
logits             [batch, V]             float32  next-token logits of the last position
next_token         [batch]                int64    argmax of ``logits`` (first index on ties)
hidden_states      [batch, seq, D]        F        final-norm hidden states (heads read the placeholder's row)
present_key_i      [batch, KVH, C, Hd]    F        = past_key_i (same buffer)
present_value_i
=================  =====================  =======  ===========================================================

Precision -> builder: fp32 -> ``-p fp32 -e cpu`` (ORT implements GroupQueryAttention in float32 on the CPU only);
fp16 / bf16 -> ``-e cuda``; int4 / int8 -> weight-only ``MatMulNBits`` with float16 activations (``-e cuda``) or
float32 activations (``target="cpu"``). Every one of these graphs also runs on ORT's CPU provider (tests/).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import onnx
from onnx import TensorProto, helper

from runtime.manifest import ComponentSpec, TensorSpec, sha256_file

Log = Callable[[str], None]
PRECISIONS = ("fp32", "fp16", "bf16", "int8", "int4")
QUANTIZED = ("int8", "int4")
DEFAULT_TARGET = {"fp32": "cpu", "fp16": "cuda", "bf16": "cuda", "int8": "cuda", "int4": "cuda"}
VALID_TARGETS = {"fp32": ("cpu",), "fp16": ("cuda",), "bf16": ("cuda",), "int8": ("cuda", "cpu"),
                 "int4": ("cuda", "cpu")}
FLOAT_NAMES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
ONNX_FLOAT = {TensorProto.FLOAT: "float32", TensorProto.FLOAT16: "float16", TensorProto.BFLOAT16: "bfloat16"}
BUILDER_OPTIONS = {"exclude_embeds": "true", "include_hidden_states": "true", "prune_lm_head": "true"}
# graph float type -> max abs error allowed vs the PyTorch model (same table as export/specs.py ATOL)
ATOL = {"fp32": 1e-4, "fp16": 2e-2, "bf16": 8e-2}
GRAPH_TAG = "gqa"


def target_of(precision: str, target: str | None = None) -> str:
    """The builder's execution provider for ``precision`` (``target`` None: the default one)."""
    if precision not in PRECISIONS:
        raise ValueError(f"--llm-graph gqa: precision {precision!r} not in {PRECISIONS}")
    target = target or DEFAULT_TARGET[precision]
    if target not in VALID_TARGETS[precision]:
        raise ValueError(f"--llm-graph gqa: precision {precision} builds for {VALID_TARGETS[precision]}, not "
                         f"{target!r} (ONNX Runtime has GroupQueryAttention in float32 on the CPU only and in "
                         "float16/bfloat16 on CUDA only)")
    return target


def float_precision(precision: str, target: str | None = None) -> str:
    """The float type (fp32 | fp16 | bf16) of the graph's activations, KV cache and the other components."""
    if precision in QUANTIZED:
        return "fp16" if target_of(precision, target) == "cuda" else "fp32"
    target_of(precision, target)
    return precision


# ------------------------------------------------------------------------------------------ builder
def builder_version() -> str | None:
    for dist in ("onnxruntime-genai", "onnxruntime-genai-cuda"):
        try:
            return f"{dist} {importlib.metadata.version(dist)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def write_hf_folder(lm, folder: str | Path, tokenizer=None) -> Path:
    """A HF ``MistralForCausalLM`` (LoRA merged, its own dtype) -> ``folder`` with safetensors weights and the
    tokenizer files the builder's ``AutoTokenizer`` needs (``tokenizer``: a ``tokenizers.Tokenizer``; None: a
    minimal word-level one with ``<unk> <s> </s>``, the ids only matter to ORT GenAI's own generator)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if type(lm).__name__ != "MistralForCausalLM":
        raise ValueError(f"the GQA graph is built from a MistralForCausalLM, got {type(lm).__name__}; merge LoRA "
                         "first (TaskLLM.merge_lora) and pass model.llm.base_model()")
    lm.save_pretrained(str(folder), safe_serialization=True)
    write_tokenizer(folder, tokenizer)
    return folder


def write_tokenizer(folder: Path, tokenizer=None) -> None:
    if tokenizer is None:
        from tokenizers import Tokenizer, models, pre_tokenizers

        tokenizer = Tokenizer(models.WordLevel({"<unk>": 0, "<s>": 1, "</s>": 2}, unk_token="<unk>"))
        tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
         "unk_token": "<unk>"}) + "\n")


def run_builder(hf_dir: str | Path, out_dir: str | Path, precision: str, target: str,
                options: dict[str, str] | None = None, log: Log = print, tpo_options: bool = True) -> dict:
    """Run the builder (subprocess) on a HF folder; returns {"seconds", "command", "log"} (log: last lines).

    ``tpo_options``: add ``BUILDER_OPTIONS`` (False: the builder's defaults, as an ORT GenAI user would build)."""
    if importlib.util.find_spec("onnxruntime_genai") is None:
        raise RuntimeError("--llm-graph gqa needs ONNX Runtime GenAI's model builder: pip install "
                           "onnxruntime-genai==0.18.0 (or onnxruntime-genai-cuda on a CUDA machine)")
    out_dir, cache = Path(out_dir), Path(out_dir).parent / "builder_cache"
    opts = {**(BUILDER_OPTIONS if tpo_options else {}), **(options or {})}
    cmd = [sys.executable, str(Path(__file__).with_name("genai_builder.py")), "-i", str(hf_dir), "-o", str(out_dir),
           "-p", precision, "-e", target, "-c", str(cache)]
    if opts:
        cmd += ["--extra_options", *[f"{k}={v}" for k, v in opts.items()]]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    tail = "\n".join((proc.stdout + "\n" + proc.stderr).strip().splitlines()[-25:])
    if proc.returncode != 0 or not (out_dir / "model.onnx").is_file():
        raise RuntimeError(f"the ONNX Runtime GenAI builder failed (exit {proc.returncode}) on {hf_dir}:\n{tail}")
    shutil.rmtree(cache, ignore_errors=True)
    seconds = time.perf_counter() - t0
    log(f"[tpo export] GenAI builder: -p {precision} -e {target} in {seconds:.1f}s")
    return {"seconds": seconds, "command": " ".join(cmd), "log": tail}


# ------------------------------------------------------------------------------------------ graph surgery
def _rename_all(graph: onnx.GraphProto, renames: dict[str, str]) -> None:
    for node in graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    for vi in [*graph.input, *graph.output, *graph.value_info]:
        vi.name = renames.get(vi.name, vi.name)


def _set_dims(vi: onnx.ValueInfoProto, dims: list[int | str]) -> None:
    shape = vi.type.tensor_type.shape
    del shape.dim[:]
    for d in dims:
        if isinstance(d, int):
            shape.dim.add().dim_value = d
        else:
            shape.dim.add().dim_param = d


def _dims(vi: onnx.ValueInfoProto) -> list:
    return [d.dim_param if d.HasField("dim_param") else d.dim_value for d in vi.type.tensor_type.shape.dim]


def finish_graph(src_dir: str | Path, out_dir: str | Path, name: str = "llm", meta: dict | None = None) -> dict:
    """Builder output (``src_dir/model.onnx`` + ``model.onnx.data``) -> ``out_dir/<name>.onnx`` (+ ``.data``) in the
    tpo-edge contract (see the module docstring). The weights file is moved, not copied. Returns
    ``{"file", "external_data", "bytes", "layers", "hidden_size", "vocab_size", "kv_heads", "head_dim", "dtype"}``."""
    src_dir, out_dir = Path(src_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    proto = onnx.load(str(src_dir / "model.onnx"), load_external_data=False)
    g = proto.graph
    ins = {vi.name: vi for vi in g.input}
    outs = {vi.name: vi for vi in g.output}
    layers = sum(1 for n in ins if n.startswith("past_key_values.") and n.endswith(".key"))
    need = {"inputs_embeds", "attention_mask"} - set(ins) | {"hidden_states", "logits"} - set(outs)
    if layers == 0 or need:
        raise ValueError(f"{src_dir}/model.onnx is not a builder graph with exclude_embeds + include_hidden_states "
                         f"(missing {sorted(need)}, {layers} KV layers); inputs {sorted(ins)}")
    emb = ins["inputs_embeds"]
    elem = emb.type.tensor_type.elem_type
    hidden = _dims(emb)[2]
    _, kvh, _, _ = _dims(ins["past_key_values.0.key"])
    vocab = _dims(outs["logits"])[-1]
    head_dim = _head_dim(g)
    renames = {"logits": "logits_last"}
    for i in range(layers):
        for kind in ("key", "value"):
            renames[f"past_key_values.{i}.{kind}"] = f"past_{kind}_{i}"
            renames[f"present.{i}.{kind}"] = f"present_{kind}_{i}"
    _rename_all(g, renames)
    axes = helper.make_tensor("tpo/squeeze_axes", TensorProto.INT64, [1], [1])
    g.initializer.append(axes)
    squeezed = "logits" if elem == TensorProto.FLOAT else "tpo/logits_io"
    g.node.append(helper.make_node("Squeeze", ["logits_last", axes.name], [squeezed], name="tpo/logits/Squeeze"))
    if squeezed != "logits":
        g.node.append(helper.make_node("Cast", [squeezed], ["logits"], name="tpo/logits/Cast", to=TensorProto.FLOAT))
    g.node.append(helper.make_node("ArgMax", ["logits"], ["next_token"], name="tpo/next_token/ArgMax", axis=-1,
                                   keepdims=0, select_last_index=0))
    kv_dims = ["batch", kvh, "kv_capacity", head_dim]
    by_name = {vi.name: vi for vi in [*g.input, *g.output]}
    new_in = [by_name["inputs_embeds"], by_name["attention_mask"]]
    new_out = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", vocab]),
               helper.make_tensor_value_info("next_token", TensorProto.INT64, ["batch"]), by_name["hidden_states"]]
    _set_dims(new_in[0], ["batch", "seq", hidden])
    _set_dims(new_in[1], ["batch", "total"])
    _set_dims(new_out[2], ["batch", "seq", hidden])
    for i in range(layers):
        for kind in ("key", "value"):
            new_in.append(by_name[f"past_{kind}_{i}"])
            new_out.append(by_name[f"present_{kind}_{i}"])
            _set_dims(new_in[-1], kv_dims)
            _set_dims(new_out[-1], kv_dims)
    del g.input[:]
    g.input.extend(new_in)
    del g.output[:]
    g.output.extend(new_out)
    data_name = _move_external_data(proto, src_dir, out_dir, name)
    props = {"tpo.llm_graph": GRAPH_TAG, "tpo.builder": builder_version() or "unknown", **(meta or {})}
    for k, v in props.items():
        proto.metadata_props.add(key=k, value=str(v))
    path = out_dir / f"{name}.onnx"
    onnx.save(proto, str(path))
    size = path.stat().st_size + ((out_dir / data_name).stat().st_size if data_name else 0)
    return {"file": path.name, "external_data": data_name, "bytes": size, "layers": layers, "hidden_size": hidden,
            "vocab_size": vocab, "kv_heads": kvh, "head_dim": head_dim, "dtype": ONNX_FLOAT.get(elem, str(elem))}


def _head_dim(g: onnx.GraphProto) -> int:
    for node in g.node:
        if node.op_type == "GroupQueryAttention":
            return _gqa_head_dim(g, node)
    raise ValueError("the builder graph has no GroupQueryAttention node (was it built for an EP without GQA?)")


def _gqa_head_dim(g: onnx.GraphProto, node: onnx.NodeProto) -> int:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    inits = {t.name: t for t in g.initializer}
    cos = inits.get(node.input[7])  # cos_cache [max_positions, Hd / 2]
    if cos is None or len(cos.dims) != 2:
        raise ValueError(f"GroupQueryAttention {node.name}: cannot read the head dim from its cos cache "
                         f"({node.input[7]!r}); attributes {attrs}")
    return int(cos.dims[1]) * 2


def _move_external_data(proto: onnx.ModelProto, src_dir: Path, out_dir: Path, name: str) -> str | None:
    locations = {e.value for t in proto.graph.initializer for e in t.external_data if e.key == "location"}
    if not locations:
        return None
    if len(locations) != 1:
        raise ValueError(f"the builder wrote weights to several files {sorted(locations)}; expected one")
    data_name = f"{name}.onnx.data"
    shutil.move(str(src_dir / locations.pop()), str(out_dir / data_name))
    for t in proto.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = data_name
    return data_name


def _external(t: onnx.TensorProto) -> dict | None:
    if t.data_location != TensorProto.EXTERNAL:
        return None
    e = {kv.key: kv.value for kv in t.external_data}
    return {"location": e["location"], "offset": int(e.get("offset", 0)), "length": int(e["length"])}


def graph_bytes(path: str | Path) -> int:
    """Bytes of a graph: the .onnx file plus every external tensor it references (shared files counted once per
    tensor, not per file)."""
    path = Path(path)
    proto = onnx.load(str(path), load_external_data=False)
    return path.stat().st_size + sum(e["length"] for t in proto.graph.initializer if (e := _external(t)))


def _same_bytes(a: Path, a_off: int, b: Path, b_off: int, length: int, chunk: int = 1 << 26) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        fa.seek(a_off)
        fb.seek(b_off)
        for start in range(0, length, chunk):
            n = min(chunk, length - start)
            if fa.read(n) != fb.read(n):
                return False
    return True


def share_external_data(path: str | Path, donor: str | Path, log: Log = print) -> int:
    """Point ``path``'s external initializers at ``donor``'s weights file when every tensor exists there with equal
    bytes (e.g. our graph and ORT GenAI's default build of the same HF folder), through a hard link beside
    ``path``; ``path``'s own weights file is deleted. Returns the bytes saved (0: nothing shared, nothing changed).
    Every byte is compared first."""
    path, donor = Path(path), Path(donor)
    ours = onnx.load(str(path), load_external_data=False)
    theirs = {t.name: e for t in onnx.load(str(donor), load_external_data=False).graph.initializer
              if (e := _external(t))}
    exts = [(t, e) for t in ours.graph.initializer if (e := _external(t))]
    own = {e["location"] for _, e in exts}
    donor_files = {theirs[t.name]["location"] for t, _ in exts if t.name in theirs}
    if not exts or len(own) != 1 or len(donor_files) != 1:
        return 0
    for t, e in exts:
        d = theirs.get(t.name)
        if d is None or d["length"] != e["length"] or not _same_bytes(
                path.parent / e["location"], e["offset"], donor.parent / d["location"], d["offset"], e["length"]):
            log(f"[tpo export] {path.name}: {t.name} differs from {donor.name}'s; weights not shared")
            return 0
    link = f"{path.name}.shared.data"
    (path.parent / link).unlink(missing_ok=True)
    os.link(donor.parent / donor_files.pop(), path.parent / link)
    for t, _ in exts:
        d = theirs[t.name]
        del t.external_data[:]
        for key, value in (("location", link), ("offset", d["offset"]), ("length", d["length"])):
            t.external_data.add(key=key, value=str(value))
    old = path.parent / own.pop()
    saved = old.stat().st_size
    onnx.save(ours, str(path))
    old.unlink()
    log(f"[tpo export] {path.name}: weights shared with {donor} (hard link), {saved / 1e9:.2f} GB saved")
    return saved


# ------------------------------------------------------------------------------------------ manifest entry
def component_spec(info: dict, out_dir: str | Path, precision: str, capacity: int, max_batch: int = 1,
                   prefill_opt: int = 128, target: str | None = None) -> ComponentSpec:
    """The manifest entry of a finished graph (``info`` from :func:`finish_graph`)."""
    out_dir = Path(out_dir)
    f = info["dtype"]
    d, kvh, hd, c = info["hidden_size"], info["kv_heads"], info["head_dim"], capacity
    kv_doc = "the layer's KV buffer, positions 0..C-1; bind the same memory as the matching present_* output"
    inputs = [TensorSpec("inputs_embeds", f, ("batch", "seq", d), "embeddings of the new tokens"),
              TensorSpec("attention_mask", "int64", ("batch", "total"),
                         "1 for cached + new positions, then 0; decode under CUDA graphs binds all C columns")]
    outputs = [TensorSpec("logits", "float32", ("batch", info["vocab_size"]), "next-token logits, last position"),
               TensorSpec("next_token", "int64", ("batch",), "argmax of logits (first index on ties)"),
               TensorSpec("hidden_states", f, ("batch", "seq", d), "final-norm hidden states")]
    for i in range(info["layers"]):
        for kind in ("key", "value"):
            inputs.append(TensorSpec(f"past_{kind}_{i}", f, ("batch", kvh, c, hd), kv_doc))
            outputs.append(TensorSpec(f"present_{kind}_{i}", f, ("batch", kvh, c, hd), "= past (written in place)"))
    opt = max(1, min(prefill_opt, c))
    profiles = {"prefill": {"batch": (1, 1, max_batch), "seq": (1, opt, c), "total": (1, opt, c)},
                "decode": {"batch": (1, 1, max_batch), "seq": (1, 1, 1), "total": (1, c, c)}}
    fprec = float_precision(precision, target)
    tol = {} if precision in QUANTIZED else {"logits": ATOL[fprec], "hidden_states": ATOL[fprec]}
    ext = info["external_data"]
    return ComponentSpec(
        file=info["file"], sha256=sha256_file(out_dir / info["file"]), inputs=tuple(inputs), outputs=tuple(outputs),
        profiles=profiles, precision=precision, external_data=ext,
        external_data_sha256=sha256_file(out_dir / ext) if ext else None, tolerance=tol, engine=None,
        doc="Mistral decoder from ONNX Runtime GenAI's model builder: GroupQueryAttention on one shared KV buffer "
            "per tensor, fused RoPE and RMSNorm, last-position logits, device argmax (export/llm_gqa.py)")


# ------------------------------------------------------------------------------------------ entry points
def build_from_hf(hf_dir: str | Path, out_dir: str | Path, precision: str, target: str | None = None,
                  name: str = "llm", options: dict[str, str] | None = None, log: Log = print) -> dict:
    """Builder + :func:`finish_graph` on a HF folder -> ``out_dir/<name>.onnx``; returns the finish info plus
    the builder record (``builder``)."""
    target = target_of(precision, target)
    out_dir = Path(out_dir)
    work = out_dir / f"_{name}_builder"
    shutil.rmtree(work, ignore_errors=True)
    try:
        rec = run_builder(hf_dir, work / "graph", precision, target, options, log)
        info = finish_graph(work / "graph", out_dir, name, meta={"tpo.precision": precision, "tpo.target": target})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {**info, "builder": rec, "precision": precision, "target": target}


def export_llm_gqa(model, out: str | Path, precision: str, capacity: int, max_batch: int = 1,
                   prefill_opt: int = 128, target: str | None = None, log: Log = print) -> tuple[dict, ComponentSpec]:
    """A TPOModel (LoRA merged, in ``float_precision(precision)``) -> ``out/llm.onnx``; (report record, spec)."""
    out = Path(out)
    t0 = time.perf_counter()
    hf = out / "_llm_hf"
    shutil.rmtree(hf, ignore_errors=True)
    try:
        write_hf_folder(model.llm.base_model(), hf, model.tokenizer)
        info = build_from_hf(hf, out, precision, target, "llm", log=log)
    finally:
        shutil.rmtree(hf, ignore_errors=True)
    cfg = model.config.llm
    want = {"layers": cfg.num_layers, "hidden_size": cfg.hidden_size, "kv_heads": cfg.num_kv_heads,
            "head_dim": cfg.head_dim, "dtype": FLOAT_NAMES[float_precision(precision, target)]}
    bad = {k: (info[k], v) for k, v in want.items() if info[k] != v}
    if bad:
        raise ValueError(f"the GQA graph disagrees with the model config (graph, config): {bad}")
    spec = component_spec(info, out, precision, capacity, max_batch, prefill_opt, target)
    seconds = time.perf_counter() - t0
    log(f"[tpo export] llm (gqa, {precision}): {info['bytes'] / 1e6:.2f} MB, {seconds:.1f}s")
    rec = {"file": info["file"], "external_data": info["external_data"], "seconds": seconds, "bytes": info["bytes"],
           "exporter": "gqa", "builder": builder_version(), "builder_seconds": info["builder"]["seconds"],
           "target": info["target"]}
    return rec, spec
