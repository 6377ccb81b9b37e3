"""``tpo demo``: the fresh-install demo, and the cached export of the embedded model it runs on.

It bridges the model side and the runtime (a synthetic sample video and an export of the embedded default
model, then four requests through the runtime on the CPU), so it lives in ``export/`` rather than ``runtime/``
(which never imports ``tpo_core``).
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path

import numpy as np

from runtime.contract.routing import force_token
from runtime.paths import cache_root
from runtime.report import print_result, write_outputs
from tpo_core.checkpoint import EMBEDDED_DEFAULT
from tpo_core.data.sample import SAMPLE_PROMPTS, sample_video

TASK_PROMPTS = tuple(zip(("qa", "region", "temporal", "mask"), SAMPLE_PROMPTS))  # one request per task
BEGIN_TOKEN = {"region": "<box_begin>", "temporal": "<time_begin>", "mask": "<track_begin>"}

def _code_hash() -> str:
    """Hash of the model + export code, the manifest schema and the tokenizer assets: an export is stale when any of
    them changed."""
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    core = root / "tpo_core"
    files = sorted([*(core / "modeling").rglob("*.py"), *(core / "assets").rglob("*.json"),
                    *(root / "export").rglob("*.py"),
                    *(core / n for n in ("config.py", "model.py", "tokens.py", "prompting.py", "export_specs.py",
                                         "checkpoint.py", "generation.py")), core / "data" / "tokenizer_build.py",
                    root / "runtime" / "manifest.py", *(root / "runtime" / "contract").rglob("*.py")])
    for f in files:
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


_EXPORTS: dict[tuple[str, str, str], Path] = {}  # per process: one export per (checkpoint, cache) even if code changes


def cached_export(checkpoint: str = "embedded", cache: Path | None = None, log=print,
                  exporter: str = "torchscript") -> Path:
    """Export ``checkpoint`` once into ``cache/exports/<key>`` (key: weights hash + code hash + exporter).

    The demo uses the TorchScript exporter: the ten tiny graphs take ~3 s instead of ~57 s with dynamo on two
    cores, and pass the same ``tpo verify`` checks (tests/test_export_torchscript.py)."""
    memo = (str(checkpoint), str(cache or cache_root()), exporter)
    if memo in _EXPORTS and (_EXPORTS[memo] / "manifest.json").is_file():
        return _EXPORTS[memo]
    _EXPORTS[memo] = _cached_export(checkpoint, cache, log, exporter)
    return _EXPORTS[memo]


def _cached_export(checkpoint: str, cache: Path | None, log, exporter: str) -> Path:
    from export.exporter import export_model
    from runtime.manifest import Manifest, ManifestError
    from tpo_core.checkpoint import checkpoint_hash

    folder = EMBEDDED_DEFAULT if checkpoint == "embedded" else Path(checkpoint)
    weights = checkpoint_hash(folder)[:16] if (folder / "model.safetensors").is_file() else "untrained-tiny"
    out = (cache or cache_root()) / "exports" / f"{weights}-{_code_hash()}-{exporter}"
    try:
        Manifest.load(out)
        return out
    except (FileNotFoundError, ManifestError):
        pass
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    log(f"[tpo demo] exporting {checkpoint} to {out} (once; cached)")
    export_model(checkpoint, tmp, log=log, exporter=exporter)
    if out.exists():  # a concurrent run finished first
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.rename(out)
    return out


def prepare_demo(checkpoint: str, cache: Path | None = None, log=print) -> tuple[Path, Path, str, bool]:
    """-> (export folder, sample video, object phrase, whether the model is the untrained fallback)."""

    video, phrase = sample_video((cache or cache_root()) / "sample")
    folder = EMBEDDED_DEFAULT if checkpoint == "embedded" else Path(checkpoint)
    untrained = checkpoint == "untrained-tiny" or not (folder / "model.safetensors").is_file()
    return cached_export(checkpoint, cache, log), video, phrase, untrained


def ground_truth(video: Path, phrase: str) -> dict:
    """The sample video's labels for ``phrase`` (the generator knows them exactly): region box (normalized),
    temporal windows (s), the segmentation record, and the QA pairs of the video."""
    from tpo_core.data.synth_tasks import task_samples

    samples = [s for s in task_samples(video.parent.parent, mask_from_start_only=False) if s.video == str(video)]
    truth: dict = {"qa": {s.question: s.answer for s in samples if s.task == "qa"}}
    for s in samples:
        if s.phrase == phrase and s.task in ("region", "temporal", "mask"):
            truth[s.task] = s
    return truth


def score_against_truth(task: str, prompt: str, res, truth: dict, clip) -> str | None:
    """One line comparing a runtime answer with the label (IoU / J / exact match), None without a label."""
    from runtime.preprocess import sample_indices
    from tpo_core.train.metrics import best_window_iou, box_iou, exact_match, video_j_and_f

    if task == "qa":
        answer = truth["qa"].get(prompt)
        if answer is None:
            return None
        return f"truth: {answer!r} -> {'right' if exact_match(res.text, answer) else 'wrong'}"
    label = truth.get(task)
    if label is None:
        return None
    if task == "region":
        gt = [label.box[0] * clip.width, label.box[1] * clip.height, label.box[2] * clip.width,
              label.box[3] * clip.height]
        iou = box_iou(res.region.box, gt) if res.region is not None else 0.0
        return f"truth: box {[round(v, 1) for v in gt]} (frame {label.box_frame}) -> IoU {iou:.2f}"
    if task == "temporal":
        best = res.temporal.best if res.temporal is not None else None
        iou = best_window_iou((best.start, best.end), label.windows) if best is not None else 0.0
        return f"truth: windows {label.windows} s -> IoU {iou:.2f}"
    seg = label.segmentation
    gts = np.stack([seg.mask(int(i)) for i in sample_indices(seg.num_frames, len(clip.timestamps))])
    if res.mask is None or res.mask.masks.shape != gts.shape:
        return "truth: masks not comparable (no mask result or a different size)"
    jf = video_j_and_f(res.mask.masks, gts)
    return f"truth: areas {[int(g.sum()) for g in gts]} -> J {jf['J']:.2f}, J&F {jf['JF']:.2f}"


def run_demo(args) -> int:
    from runtime.pipeline import Pipeline

    t0 = time.perf_counter()
    export_dir, video, phrase, untrained = prepare_demo(args.checkpoint, log=lambda m: print(m, file=sys.stderr))
    t_prep = time.perf_counter() - t0
    pipe = Pipeline.from_manifest(export_dir, threads=args.threads)
    clip = pipe.load_clip(video)
    truth = ground_truth(Path(video), phrase)
    force = args.force_routing == "on" or (args.force_routing == "auto" and untrained)
    if untrained:
        print("note: no trained embedded model is installed; the untrained tiny model answers (gibberish text)"
              + (" and each task's routing token is forced" if force else ""))
    prompts, results = [], []
    for task, template in TASK_PROMPTS:
        # QA: the sample video's own first question (its answer is known), else the generic template
        q = next(iter(truth["qa"]), template) if task == "qa" else template.format(obj=phrase)
        lp = None
        if force and task in BEGIN_TOKEN:
            lp = force_token(pipe.manifest.task_tokens[BEGIN_TOKEN[task]].id)
        res = pipe.ask(clip, q, max_new_tokens=16 if untrained else None, logits_processor=lp)
        prompts.append(q)
        results.append(res)
        print_result(q, res)
        line = score_against_truth(task, q, res, truth, clip)
        if line:
            print(f"   {line}")
    rpath, vpath = write_outputs(Path(args.out), video, clip, prompts, results)
    total = time.perf_counter() - t0
    print(f"\nvideo: {video} ({clip.width}x{clip.height}, {clip.duration:.1f} s); export: {export_dir}")
    print(f"wrote {rpath} and {vpath}; {total:.1f} s total ({t_prep:.1f} s sample + export/cache)")
    return 0
