"""Quality of the quantized GQA LLM graphs (int4 / int8 weight-only MatMulNBits) against the fp16 graph.

On held-out prompts (synthetic ``val`` split videos with their QA questions, a region and a temporal question,
through the checkpoint's vision encoder in PyTorch float32), each graph is driven by ``OrtLLM``:

- token agreement: the fp16 graph decodes greedily (``--tokens`` steps); the other graph is teacher-forced on that
  sequence and its argmax is compared at every step (baseline: always predicting the fp16 run's most frequent
  token); ``exact``: the share of prompts whose free-running greedy answer equals fp16's;
- logits: max and mean |logit - fp16 logit| over the teacher-forced steps, beside the fp16 logits' std;
- heads: routing forced after the prompt (``<box_begin>`` + ``box_token``, ``<time_begin>`` + ``temporal_token``),
  the placeholder's hidden state through the checkpoint's region / temporal heads (PyTorch float32): IoU of the
  box with fp16's (baseline: the mean fp16 box), IoU of the best span with fp16's (baseline: the whole video),
  max |saliency difference|.

The ``fp32-torch`` row is the checkpoint's own PyTorch float32 forward, the same measurement: how far fp16 itself
is from full precision. Graphs are the CUDA-target builds (float16 activations); ``--device cpu`` runs them on the
CPU provider.

    python scripts/llm_quality.py --checkpoint embedded --device cpu --videos 6 --out /tmp/q
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402,I001  (before onnxruntime on CUDA machines)
import numpy as np  # noqa: E402


class TorchLLM:
    """The checkpoint's own LLM in float32 with a DynamicCache, behind OrtLLM's append()."""

    def __init__(self, model):
        self.model = model

    def reset(self) -> None:
        from transformers import DynamicCache

        self.cache = DynamicCache()

    def append(self, embeds: np.ndarray):
        with torch.no_grad():
            logits, hidden, self.cache = self.model.llm(torch.from_numpy(np.asarray(embeds, np.float32)),
                                                        past_key_values=self.cache, use_cache=True)
        return logits[0, -1].numpy(), hidden[0].numpy(), int(logits[0, -1].argmax())


def host(x) -> np.ndarray:
    """A float32 host COPY (OrtLLM returns views of buffers that the next append overwrites)."""
    return x.float().cpu().numpy().copy() if hasattr(x, "cpu") else np.array(x, np.float32, copy=True)


def prompts(model, data: Path, per_video: int) -> list[dict]:
    """Held-out prompts: per video its first QA questions plus one region and one temporal question."""
    from tpo_core.data.synth_tasks import REGION_TEMPLATES, TEMPORAL_TEMPLATES
    from tpo_core.data.video import preprocess_frames, read_video

    cfg = model.config
    region = {r["vid"]: r for r in json.loads((data / "region.json").read_text())}
    out = []
    for conv in json.loads((data / "conversations.json").read_text()):
        clip = read_video(data / conv["video"], cfg.vision.num_frames)
        pixels = preprocess_frames(clip.frames, cfg.vision.img_size, cfg.vision.mean, cfg.vision.std,
                                   mode=cfg.vision.resize)
        with torch.no_grad():
            visual, feats, patches = model.encode_video_patches(pixels[None].float())
        qs = [t["value"].replace("<video>\n", "") for t in conv["conversations"] if t["from"] == "human"][:per_video]
        phrase = region[conv["id"]]["query"] if conv["id"] in region else "the shape"
        qs += [REGION_TEMPLATES[0].format(p=phrase), TEMPORAL_TEMPLATES[0].format(p=phrase)]
        for i, q in enumerate(qs):
            ids = model.prompts.build(q, clip.timestamps)
            with torch.no_grad():
                emb = model.sequence_embeds(ids, visual).numpy()
            kind = "region" if i == len(qs) - 2 else "temporal" if i == len(qs) - 1 else "qa"
            out.append({"embeds": emb, "kind": kind, "clip": clip, "feats": feats, "question": q,
                        "patches": patches if model.uses_patches else None})
    return out


def decode(llm, embed, prompt: np.ndarray, forced: list[int] | None, steps: int, eos: int):
    """Greedy decode (``forced`` None) or teacher-forced on ``forced``; returns (tokens, logits per step)."""
    llm.reset()
    logits, _, tok = llm.append(prompt)
    toks, rows = [], [host(logits)]
    for i in range(steps):
        nxt = tok if forced is None else forced[i]
        toks.append(nxt)
        if i == steps - 1 or (forced is None and nxt == eos) or (forced is not None and i == len(forced) - 1):
            break
        logits, _, tok = llm.append(embed([nxt]))
        rows.append(host(logits))
    return toks, np.stack(rows)


def head_outputs(model, llm, embed, p: dict) -> dict:
    """Forced routing after the prompt -> the head's outputs from the placeholder's hidden state."""
    from tpo_core.modeling.heads.temporal import spans_to_seconds

    ids = model.task_ids
    begin, placeholder = (ids.box_begin, ids.boxes) if p["kind"] == "region" else (ids.time_begin, ids.temp)
    llm.reset()
    llm.append(p["embeds"])
    llm.append(embed([begin]))
    _, hidden, _ = llm.append(embed([placeholder]))
    h = torch.from_numpy(host(hidden)[-1:])
    with torch.no_grad():
        if p["kind"] == "region":
            return {"box": model.run_region(h, p["patches"])[0].numpy()}
        clip = p["clip"]
        times = torch.as_tensor(clip.timestamps, dtype=torch.float32)[None] / max(clip.duration, 1e-6)
        out = model.run_temporal(h, p["feats"], times)
        spans = spans_to_seconds(out.pred_logits, out.pred_spans, clip.duration,
                                 round_to=model.config.temporal.round_to_s)[0]
    return {"span": np.asarray(spans[0][:2]), "saliency": out.saliency[0].numpy(), "duration": clip.duration}


def iou_1d(a, b) -> float:
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = max(a[1], b[1]) - min(a[0], b[0])
    return inter / union if union > 0 else 1.0


def _area(r) -> float:
    return max(0.0, r[2] - r[0]) * max(0.0, r[3] - r[1])


def iou_box(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = _area(a) + _area(b) - ix * iy
    return ix * iy / union if union > 0 else 1.0


def compare(name: str, ref: dict, got: dict, ps: list[dict]) -> dict:
    """One row of the report: ``got`` (a precision's runs) against ``ref`` (fp16's)."""
    forced_ok = [int(np.sum(np.argmax(g, 1)[: len(t)] == np.asarray(t)))
                 for g, t in zip(got["forced_logits"], ref["tokens"])]
    n = sum(len(t) for t in ref["tokens"])
    all_ref = np.concatenate([np.asarray(t) for t in ref["tokens"]])
    majority = np.bincount(all_ref).argmax()
    err = [np.abs(g - r) for g, r in zip(got["forced_logits"], ref["logits"])]
    boxes = [(h["box"], r["box"]) for h, r in zip(got["heads"], ref["heads"]) if "box" in r]
    mean_box = np.mean([r for _, r in boxes], axis=0)
    spans = [(h, r) for h, r in zip(got["heads"], ref["heads"]) if "span" in r]
    return {
        "name": name, "prompts": len(ps), "tokens": n,
        "token_agreement": sum(forced_ok) / n, "baseline_majority_token": float(np.mean(all_ref == majority)),
        "exact_answers": float(np.mean([g == r for g, r in zip(got["tokens"], ref["tokens"])])),
        "max_logit_err": float(max(e.max() for e in err)), "mean_logit_err": float(np.mean([e.mean() for e in err])),
        "fp16_logit_std": float(np.mean([r.std() for r in ref["logits"]])),
        "box_iou_mean": float(np.mean([iou_box(g, r) for g, r in boxes])),
        "box_iou_min": float(np.min([iou_box(g, r) for g, r in boxes])),
        "baseline_mean_box_iou": float(np.mean([iou_box(mean_box, r) for _, r in boxes])),
        "span_iou_mean": float(np.mean([iou_1d(g["span"], r["span"]) for g, r in spans])),
        "baseline_whole_video_span_iou": float(np.mean([iou_1d((0.0, r["duration"]), r["span"]) for _, r in spans])),
        "saliency_max_abs_diff": float(max(np.abs(g["saliency"] - r["saliency"]).max() for g, r in spans)),
    }


def run(llm, model, embed, ps: list[dict], steps: int, eos: int, ref: dict | None) -> dict:
    rec = {"tokens": [], "logits": [], "forced_logits": [], "heads": []}
    for i, p in enumerate(ps):
        toks, logits = decode(llm, embed, p["embeds"], None, steps, eos)
        rec["tokens"].append(toks)
        rec["logits"].append(logits)
        forced = (ref or rec)["tokens"][i]
        rec["forced_logits"].append(logits if ref is None else decode(llm, embed, p["embeds"], forced, steps, eos)[1])
        rec["heads"].append(head_outputs(model, llm, embed, p) if p["kind"] != "qa" else {})
    return rec


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default="embedded")
    ap.add_argument("--precisions", nargs="+", default=["int8", "int4"], choices=["int8", "int4"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--videos", type=int, default=6, help="held-out val videos (seed --seed)")
    ap.add_argument("--questions", type=int, default=2, help="QA questions per video (+ a region and a temporal)")
    ap.add_argument("--tokens", type=int, default=24, help="greedy tokens per prompt")
    ap.add_argument("--seed", type=int, default=2027)
    ap.add_argument("--builder-options", nargs="*", default=[], metavar="KEY=VALUE",
                    help="extra builder options for the quantized graphs (e.g. algo_config=k_quant block_size=128)")
    ap.add_argument("--work", default=None, help="where the graphs are built (default: a temporary folder)")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args(argv)
    from export.exporter import load_source
    from export.llm_gqa import build_from_hf, write_hf_folder
    from runtime.engines.ort_llm import OrtLLM
    from tpo_core.data.synth import generate_dataset

    t0 = time.perf_counter()
    work = Path(args.work or tempfile.mkdtemp(prefix="llm_quality_"))
    model, source = load_source(args.checkpoint, torch.float32)
    model.eval()
    generate_dataset(work / "val", args.videos, args.seed, split="val", overwrite=True)
    ps = prompts(model, work / "val", args.questions)
    table = model.llm.base_model().get_input_embeddings().weight.detach()
    placeholders = {k: v.detach() for k, v in model.llm.placeholder_embeddings().items()}

    def embed(ids: list[int]) -> np.ndarray:
        rows = torch.stack([placeholders.get(i, table[i]) for i in ids])
        return rows[None].numpy()

    lm16 = load_source(args.checkpoint, torch.float16)[0].llm.base_model()
    write_hf_folder(lm16, work / "hf", model.tokenizer)
    opts = dict(kv.split("=", 1) for kv in args.builder_options)
    graphs = {p: work / p / build_from_hf(work / "hf", work / p, p, options=opts if p != "fp16" else None,
                                          log=print)["file"] for p in ["fp16", *args.precisions]}
    cap = max(p["embeds"].shape[1] for p in ps) + args.tokens + 4
    eos = model.prompts.eos_id
    ref = run(OrtLLM(graphs["fp16"], cap, args.device), model, embed, ps, args.tokens, eos, None)
    rows = [compare("fp32-torch", ref, run(TorchLLM(model), model, embed, ps, args.tokens, eos, ref), ps)]
    for prec in args.precisions:
        got = run(OrtLLM(graphs[prec], cap, args.device), model, embed, ps, args.tokens, eos, ref)
        rows.append(compare(prec, ref, got, ps))
    sizes = {p: sum(f.stat().st_size for f in (work / p).glob("llm.onnx*")) for p in graphs}
    report = {"checkpoint": source["checkpoint"], "device": args.device, "videos": args.videos,
              "seed": args.seed, "reference": "fp16 GQA graph", "rows": rows, "graph_bytes": sizes,
              "builder_options": opts,
              "seconds": time.perf_counter() - t0,
              "command": "python scripts/llm_quality.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"llm_quality_{args.device.split(':')[0]}.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"{len(ps)} held-out prompts, {rows[0]['tokens']} fp16 tokens; graph sizes (MB): "
          + ", ".join(f"{k} {v / 1e6:.2f}" for k, v in sizes.items()))
    keys = ("token_agreement", "baseline_majority_token", "exact_answers", "max_logit_err", "mean_logit_err",
            "fp16_logit_std", "box_iou_mean", "box_iou_min", "baseline_mean_box_iou", "span_iou_mean",
            "baseline_whole_video_span_iou", "saliency_max_abs_diff")
    print(f"{'vs fp16':28s}" + "".join(f"{r['name']:>12s}" for r in rows))
    for k in keys:
        print(f"{k:28s}" + "".join(f"{r[k]:12.4f}" for r in rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
