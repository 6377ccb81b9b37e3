"""Turn a trained checkpoint into the embedded default: LoRA merged, fp16 safetensors, checked.

    python scripts/ship_default.py SRC DST [--data VAL_DIR] [--samples 24]

1. loads SRC (a ``tpo train`` output folder, e.g. ``<work>/d_stage3_qa/final``) in float32;
2. greedy-decodes ``--samples`` held-out samples (spread over the tasks) before and after merging LoRA and
   after the fp16 round trip (DST reloaded), and reports how many token sequences / routed heads changed;
3. writes DST (model.safetensors in fp16, config, tokenizer) and prints its size (budget: 15 MB);
4. tracks the mask samples from their label box in fp32 and under bf16 autocast (the GPU training precision) and
   reports the mean IoU of the two masks per sample (``mask_bf16_vs_fp32_iou``): a head whose output depends on the
   precision shows here (the fourth default's candidate choice by an untrained IoU head: 0.2-0.3 where a sound head
   gives ~1).

Exit status 1 if DST exceeds the budget or if the merge (fp32) changed any token sequence; fp16 differences
are reported, not fatal (half precision may flip a near-tie).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BUDGET_BYTES = 15_000_000


def _pick(samples: list, n: int) -> list:
    by_task: dict[str, list] = {}
    for s in samples:
        by_task.setdefault(s.task, []).append(s)
    out, k = [], 0
    while len(out) < n and any(k < len(v) for v in by_task.values()):
        out += [v[k] for v in by_task.values() if k < len(v)][: n - len(out)]
        k += 1
    return out


def _answers(model, samples: list, clips: dict) -> list[tuple[list[int], list[str]]]:
    from tpo_core.data.video import read_video

    out = []
    with torch.no_grad():
        for s in samples:
            if s.video not in clips:
                clips[s.video] = read_video(s.video, model.config.vision.num_frames)
            clip = clips[s.video]
            frames = torch.from_numpy(np.ascontiguousarray(clip.frames))
            res = model.generate(clip, s.question, mask_frames=frames, mask_timestamps=clip.timestamps)
            out.append((list(res.token_ids), list(res.tasks)))
    return out


def _mask_precision_agreement(model, samples: list, clips: dict) -> float | None:
    """Mean IoU between the label-box-prompted masks of the mask samples in fp32 and under bf16 autocast (CPU)."""
    from tpo_core.train.probes import track_from_label_box

    ious = []
    with torch.no_grad():
        for s in samples:
            if s.task != "mask" or s.video not in clips:
                continue
            clip = clips[s.video]
            first = s.segmentation.mask(int(clip.indices[0])) if s.segmentation is not None else None
            if first is None or not first.any():
                continue
            masks = []
            for bf16 in (False, True):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    masks.append(track_from_label_box(model, first, clip.frames)[0])
            inter, union = (masks[0] & masks[1]).sum(), (masks[0] | masks[1]).sum()
            ious.append(1.0 if union == 0 else float(inter / union))
    return float(np.mean(ious)) if ious else None


def main(argv: list[str] | None = None) -> int:
    from tpo_core.data.synth_tasks import task_samples
    from tpo_core.model import TPOModel

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--data", help="held-out dataset folder for the token checks (tpo data synth --split val)")
    p.add_argument("--samples", type=int, default=24)
    args = p.parse_args(argv)
    model = TPOModel.from_pretrained(args.src).eval()
    samples = _pick(task_samples(args.data), args.samples) if args.data else []
    clips: dict = {}
    before = _answers(model, samples, clips)
    model.llm.merge_lora()
    merged = _answers(model, samples, clips)
    dst = Path(args.dst)
    model.save_pretrained(dst, dtype=torch.float16)
    half = _answers(TPOModel.from_pretrained(dst).eval(), samples, clips)
    size = sum(f.stat().st_size for f in dst.iterdir() if f.is_file())
    report = {
        "src": str(args.src), "dst": str(dst), "bytes": size, "budget_bytes": BUDGET_BYTES,
        "samples": len(samples),
        "merge_changed_tokens": sum(a[0] != b[0] for a, b in zip(before, merged)),
        "fp16_changed_tokens": sum(a[0] != b[0] for a, b in zip(before, half)),
        "fp16_changed_routing": sum(a[1] != b[1] for a, b in zip(before, half)),
        "mask_bf16_vs_fp32_iou": _mask_precision_agreement(model.float(), samples, clips),
    }
    print(json.dumps(report, indent=1))
    (dst / "ship_report.json").write_text(json.dumps(report, indent=1) + "\n")
    return 0 if size <= BUDGET_BYTES and report["merge_changed_tokens"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
