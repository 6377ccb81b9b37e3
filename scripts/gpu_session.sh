#!/bin/bash
# The GPU session of this toolkit's measurements, as it was run on the lent H200 machines (2 GPUs, 32 cores).
# Each phase is one command of at most ~9.5 min, sent back to back (state in /tmp between them); the carried wheels
# (onnxruntime-gpu, onnxruntime-genai-cuda, decord, av) are installed into /tmp/site first; the wheel set's
# transformers 4.57 is removed from /tmp/site again (the image's transformers 5.x is the one this code needs).
#
#   bash scripts/gpu_session.sh start    # versions; background: training (GPU 1, its own), the full-size convert
#                                        # chain and the 7B LLM builds (spare cores); foreground: the GPU tests on
#                                        # GPU 0 (three files), one pytest process per file (a CUDA error or a
#                                        # decoder crash in one file cannot hide the others); TRAIN=0: no training
#   bash scripts/gpu_session.sh tests    # the other GPU test files, the same way
#   bash scripts/gpu_session.sh bench1   # the tiny model's GQA export under tpo bench, and streamed at 1080p30 with
#                                        # re-asks (isolated, shared, on the frame) against none
#   bash scripts/gpu_session.sh profile  # kernel time per class per decoded token at the 7B shape, ours vs ORT GenAI
#   bash scripts/gpu_session.sh bench2   # LLM peers at the 7B shape, one process (needs BUILD_ALL=1 at start)
#   bash scripts/gpu_session.sh bench3   # the 7B-shape pipeline end to end + the SAM2-L peer, on the converted export
#   bash scripts/gpu_session.sh fp8      # the 7B layer's matmuls fp16 vs FP8 (ORT GemmFloat8, torch _scaled_mm)
#   bash scripts/gpu_session.sh collect  # training (waits for it) and convert results
#
# Knobs (environment): TRAIN=0 / LLM=0 skip training / the LLM builds at start; TRAIN_BUDGET_S, TRAIN_SHARES,
# TRAIN_GPU (a comma list such as 0,1: the default under DDP), TRAIN_VIDEOS, TRAIN_STAGES + TRAIN_INIT (e.g. 3 and a
# carried model folder: continue its stage 3), ABLATION=1 (+ ABLATION_GPU);
# LLM_LAYERS (builds and profile at fewer layers: the disk of a one-GPU machine, 64 GB, does not hold the
# full-size convert chain and three 32-layer LLM folders at once); TEST_FILES; WAIT_S; STREAM_REPEAT; FG_CPUS (the
# cores kept for timed work, default 8 of 32 / 6 of 16: FG_CPUS=1 gives training the rest when nothing is timed).
# Everything a phase measures is written under $OUT (at most 8 files; logs are tarred).
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH=/tmp/site:$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
export NVSHMEM_DISABLE_NVLS=1 TPO_EDGE_CACHE=/tmp/tpo-cache
S=/tmp/session
mkdir -p $S $OUT
phase=${1:?phase}

# GPU 0 and the first cores for what is timed (8 of 32, 6 of 16); the other cores for the background jobs; training
# on GPU 1 where there are two (on a one-GPU machine it shares GPU 0: do not time anything while it runs)
NCPU=$(nproc); NGPU=$(nvidia-smi -L 2>/dev/null | wc -l); FG=${FG_CPUS:-$(( NCPU >= 32 ? 8 : 6 ))}
TRAIN_GPU=${TRAIN_GPU:-$(( NGPU > 1 ? 1 : 0 ))}
LAYERS=${LLM_LAYERS:+--layers $LLM_LAYERS}  # the 7B LLM's layers for the builds and the profile (default: all 32)
gpu0() { CUDA_VISIBLE_DEVICES=0 taskset -c 0-$((FG - 1)) "$@"; }
bg() { taskset -c $FG-$((NCPU - 1)) setsid nohup "$@"; }
# the GPU tests, one pytest process per file (a sticky CUDA error or a decoder crash cannot hide the other files)
gpu_tests() {
  mkdir -p $S/gpu_tests
  # nvdec tests need PyNvVideoCodec (not among the carried wheels); trt tests need the full TensorRT (not installable)
  local marks="gpu and not trt and not nvdec"
  python3 -c "import PyNvVideoCodec" 2>/dev/null && marks="gpu and not trt"
  echo "GPU tests: -m '$marks'"
  for f in "$@"; do
    gpu0 timeout ${TEST_S:-170} python3 -m pytest -q -p no:cacheprovider -m "$marks" -rA --timeout 150 \
      tests/$f.py > $S/gpu_tests/$f.log 2>&1
    echo "$f rc=$? $(tail -1 $S/gpu_tests/$f.log)"
    grep -E "^(FAILED|ERROR)" $S/gpu_tests/$f.log | head -8
  done
  tar czf $OUT/gpu_tests.tgz -C $S gpu_tests
}

case $phase in
start)
  rm -rf /tmp/site/transformers /tmp/site/transformers-*.dist-info
  { nvidia-smi -L; python3 -V; python3 -c "import torch, onnxruntime as o, onnxruntime_genai as g, transformers as t, triton; \
print(torch.__version__, o.__version__, o.get_available_providers(), g.__version__, t.__version__, triton.__version__)"; \
    nproc; free -g | head -2; df -h /tmp | tail -1; } > $OUT/versions.txt 2>&1
  cat $OUT/versions.txt
  # training: issue 12, the default on GPU $TRAIN_GPU; ABLATION=1: the 3-seed co-training ablation beside it on GPU
  # $ABLATION_GPU (same data and recipe); TRAIN_VIDEOS: the train split's size
  abl="--skip-ablation"; [ "${ABLATION:-0}" = 1 ] && abl="--ablation-gpu ${ABLATION_GPU:-0}"
  [ "${TRAIN:-1}" = 1 ] && bg python3 scripts/train_gpu_session.py --out $S/train_out --work $S/train \
    --default-gpu $TRAIN_GPU $abl --train-videos ${TRAIN_VIDEOS:-3000} --stage-shares ${TRAIN_SHARES:-0.3,0.35,0.35} \
    --stages ${TRAIN_STAGES:-1,2,3} ${TRAIN_INIT:+--init $TRAIN_INIT} \
    --budget-s ${TRAIN_BUDGET_S:-1250} > $S/train.log 2>&1 &
  # issue 11 full size: synth -> convert -> export (GQA fp16) -> verify (cuda) -> run (cuda), low CPU priority
  [ "${CONVERT:-1}" = 1 ] && CUDA_VISIBLE_DEVICES=0 OUT=$S/convert_out bg nice -n 10 python3 scripts/convert_fullsize.py all \
    --llm-graph gqa --device cuda --state $S/fullsize > $S/convert.log 2>&1 &
  # the 7B LLM builds of benchmarks/llm_peers.py (CPU bound: the builder), for the profile (all four for bench2)
  peers="tpo_fp16 ort_genai_fp16"; [ -n "${BUILD_ALL:-}" ] && peers="$peers tpo_int4 ort_genai_int4"
  [ "${LLM:-1}" = 1 ] && bg bash -c "python3 benchmarks/llm_peers.py --phase weights build --peers $peers $LAYERS \
    --jobs 2 --work $S/llm_peers; \
    echo llm_build exit \$?" > $S/llm_build.log 2>&1 &
  gpu_tests ${TEST_FILES:-test_llm_gqa_gpu test_runtime_gpu test_engines}
  ;;
tests)
  gpu_tests ${TEST_FILES:-test_mask_decode test_preprocess_triton test_video_gpu}
  ;;
bench1)
  # the embedded tiny model with the GQA LLM graph (fp16, CUDA): tpo bench on CUDA (decode under CUDA graphs)
  gpu0 timeout 120 python3 -m runtime.cli export --checkpoint embedded --out $S/tiny_gqa --precision fp16 \
    --llm-graph gqa > $S/tiny_export.log 2>&1 && \
  gpu0 timeout 120 python3 -m runtime.cli bench $S/tiny_gqa --device cuda --size 1080x1920 --iters 30 --tokens 64 \
    --out $OUT/runtime_bench_tiny_gqa_cuda_H200.json > $OUT/tiny_bench.log 2>&1
  echo "tiny bench rc=$?"; tail -30 $OUT/tiny_bench.log; tail -3 $S/tiny_export.log
  # the same without CUDA graphs for the fixed-shape engines (the ratio in one session)
  gpu0 timeout 120 python3 -m runtime.cli bench $S/tiny_gqa --device cuda --size 1080x1920 --iters 30 --tokens 64 \
    --no-cuda-graphs --out $OUT/runtime_bench_tiny_gqa_cuda_nographs_H200.json > $OUT/tiny_bench_nographs.log 2>&1
  echo "tiny bench (no cuda graphs) rc=$?"; grep -A 12 "^stage" $OUT/tiny_bench_nographs.log
  # streaming at 1080p30 with tracking on every frame: re-asks isolated / shared / on the frame vs none (issue 10)
  gpu0 timeout 300 python3 benchmarks/stream_latency.py --export $S/tiny_gqa --device cuda --seconds 12 \
    --repeat ${STREAM_REPEAT:-2} --out $OUT/stream_latency_H200.json > $OUT/stream_latency.log 2>&1
  echo "stream latency rc=$?"; tail -15 $OUT/stream_latency.log
  # decord's decoder threads on this host: 16 of 240 frames of an 8 s 1080p30 clip, GOP 30 (host only)
  [ "${DECODE_THREADS_BENCH:-1}" = 1 ] && gpu0 timeout 120 python3 -c "import sys, json; sys.path.insert(0, 'benchmarks'); \
import numpy as np, preprocess as pp; from pathlib import Path; p = pp.write_video(np, Path('$S/g30.mp4'), 8, 30); \
print(json.dumps(pp.decord_threads(p, 30, 8, 16)))" > $OUT/decode_threads.json 2> $S/decode_threads.err; cat $OUT/decode_threads.json
  tail -5 $S/llm_build.log; tail -4 $S/convert.log; tail -3 $S/train.log
  ;;
profile)
  for i in $(seq ${WAIT_S:-300}); do grep -q "llm_build exit" $S/llm_build.log 2>/dev/null && break; sleep 1; done
  tail -4 $S/llm_build.log
  gpu0 timeout 300 python3 benchmarks/llm_profile.py --work $S/llm_peers $LAYERS --out $OUT > $OUT/llm_profile.log 2>&1
  echo "llm profile rc=$?"; tail -12 $OUT/llm_profile.log
  tail -4 $S/convert.log; tail -3 $S/train.log
  ;;
bench2)
  for i in $(seq 240); do grep -q "llm_build exit" $S/llm_build.log 2>/dev/null && break; sleep 1; done
  cp $S/llm_build.log $OUT/
  gpu0 timeout 420 python3 benchmarks/llm_peers.py --phase bench --work $S/llm_peers $LAYERS --out $OUT \
    > $OUT/llm_bench.log 2>&1
  echo "llm peers rc=$?"; tail -30 $OUT/llm_bench.log
  ;;
bench3)
  # waits for the convert chain's last phase (or a failed one)
  for i in $(seq ${WAIT_S:-240}); do grep -qE "^== (run: rc|[a-z]+: rc [1-9])" $S/convert.log 2>/dev/null && break; sleep 1; done
  grep -E "^== " $S/convert.log; tail -4 $S/convert.log
  gpu0 timeout 400 python3 benchmarks/e2e_7b.py --phase bench --export $S/fullsize/export --reps 5 \
    > $OUT/e2e_bench.log 2>&1
  echo "e2e rc=$?"; tail -45 $OUT/e2e_bench.log
  cp $S/convert_out/convert_fullsize.json $S/fullsize/results.json $OUT/ 2>/dev/null
  tail -3 $S/train.log
  ;;
fp8)
  # FP8 vs fp16 matmuls at the 7B layer's shapes: ORT GemmFloat8 and torch _scaled_mm (issue 10, item 2)
  gpu0 timeout 240 python3 benchmarks/fp8_matmul.py --out $OUT > $OUT/fp8_matmul.log 2>&1
  echo "fp8 matmul rc=$?"; tail -20 $OUT/fp8_matmul.log
  ;;
collect)
  for i in $(seq ${WAIT_S:-240}); do [ -f $S/train_out/summary.txt ] && break; sleep 1; done
  tail -25 $S/train.log; grep -E "^== " $S/convert.log
  cp $S/train_out/tpo_session.tar.gz $S/train_out/summary.txt $OUT/ 2>/dev/null
  cp $S/convert_out/convert_fullsize.json $S/fullsize/results.json $OUT/ 2>/dev/null
  tar czf $OUT/session_logs.tgz -C $S train.log convert.log llm_build.log 2>/dev/null
  ls -la $OUT
  ;;
*) echo "unknown phase $phase"; exit 2 ;;
esac
