#!/usr/bin/env bash
# Train and evaluate the embedded default model (tiny preset) on synthetic data. One command:
#
#   OUT=/some/dir bash scripts/train_default.sh
#
# Re-runnable in chunks: training stops with a checkpoint after MAX_MINUTES and the next invocation continues
# exactly where it stopped (--resume auto), as long as WORK survives (it lives outside OUT on purpose: data and
# checkpoints stay on the machine; OUT receives the final checkpoint, metrics, plots and eval reports).
#
# Knobs (environment): WORK, OUT, N_TRAIN (3000 videos, seed 1), N_VAL (200, seed 2, held-out split),
# STEPS1/STEPS2/STEPS3 (default: configs/train/tiny.yaml), BATCH, MAX_MINUTES (per invocation), EVAL_PER_TASK,
# WORKERS (synth processes), PYTHON.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python}
WORK=${WORK:-/tmp/tpo_default}
OUT=${OUT:-$WORK/out}
N_TRAIN=${N_TRAIN:-3000}
N_VAL=${N_VAL:-200}
MAX_MINUTES=${MAX_MINUTES:-8}
EVAL_PER_TASK=${EVAL_PER_TASK:-200}
WORKERS=${WORKERS:-8}
mkdir -p "$WORK" "$OUT"

# 1. data (skipped when already there)
[ -f "$WORK/data/train/manifest.json" ] || $PYTHON -m runtime.cli data synth --out "$WORK/data/train" \
    --videos "$N_TRAIN" --seed 1 --split train --workers "$WORKERS"
[ -f "$WORK/data/val/manifest.json" ] || $PYTHON -m runtime.cli data synth --out "$WORK/data/val" \
    --videos "$N_VAL" --seed 2 --split val --workers "$WORKERS"

# 2. train all three stages (continues from the newest checkpoint in $WORK/run)
CONFIG=configs/train/tiny.yaml
if [ -n "${STEPS1:-}${STEPS2:-}${STEPS3:-}${BATCH:-}" ]; then
    CONFIG=$WORK/tiny_override.json
    $PYTHON - "$CONFIG" <<PY
import json, sys
stages = {}
for name, steps in (("stage1", "${STEPS1:-}"), ("stage2", "${STEPS2:-}"), ("stage3", "${STEPS3:-}")):
    st = {}
    if steps:
        st["steps"] = int(steps)
    if "${BATCH:-}":
        st["batch_size"] = int("${BATCH:-0}")
    stages[name] = st
json.dump({"preset": "tiny", "stages": stages}, open(sys.argv[1], "w"), indent=1)
PY
fi
$PYTHON -m runtime.cli train --preset tiny --stage all --config "$CONFIG" --data "$WORK/data/train" \
    --out "$WORK/run" --resume auto --max-minutes "$MAX_MINUTES" --save-every 250 2>&1 | tee -a "$OUT/train.log"

# 3. copy what exists so far to OUT
for st in stage1 stage2 stage3; do
    if [ -d "$WORK/run/$st" ]; then
        mkdir -p "$OUT/$st"
        cp -f "$WORK/run/$st"/metrics.jsonl "$WORK/run/$st"/loss_curve.png "$OUT/$st/" 2>/dev/null || true
    fi
done
if [ ! -f "$WORK/run/final/model.safetensors" ]; then
    echo "training not finished yet: run this script again to continue (--resume auto)"
    exit 0
fi
rm -rf "$OUT/final" && cp -r "$WORK/run/final" "$OUT/final"

# 4. held-out evaluation (targets: routing >= 95 %, region Acc@0.5 >= 80 %, temporal R1@0.5 >= 70 %,
#    mask mean IoU >= 0.70, QA >= 80 %)
$PYTHON -m runtime.cli eval --checkpoint "$OUT/final" --data "$WORK/data/val" --per-task "$EVAL_PER_TASK" \
    --out "$OUT/eval_val.json" | tee "$OUT/eval_val.txt"
$PYTHON -m runtime.cli eval --checkpoint "$OUT/final" --data "$WORK/data/train" --per-task 100 \
    --out "$OUT/eval_train.json" > "$OUT/eval_train.txt"
echo "done: $OUT/final (copy it to tpo_core/assets/default to ship it), $OUT/eval_val.txt"
