#!/bin/bash
# The GPU session of this toolkit's measurements, as it was run on the lent H200 machines (2 GPUs, 32 cores).
# Each phase is one command of at most ~9.5 min, sent back to back (state in /tmp between them); the carried wheels
# (onnxruntime-gpu, onnxruntime-genai-cuda, decord, av, pynvvideocodec) are installed into /tmp/site first.
#
#   bash scripts/gpu_session.sh start    # versions; background: training (GPU 1), the full-size convert chain and the
#                                        # 7B LLM builds (spare cores); foreground: the GPU test suite on GPU 0
#   bash scripts/gpu_session.sh bench1   # device preprocessing benchmark; the tiny model's GQA export under tpo bench and
#                                        # streamed at 1080p30 with re-asks
#   bash scripts/gpu_session.sh bench2   # LLM peers at the 7B shape (one process)
#   bash scripts/gpu_session.sh collect  # training (waits for it) and convert results
#   bash scripts/gpu_session.sh bench3   # the 7B-shape pipeline end to end + the SAM2-L peer, on the converted export
#
# Everything a phase measures is written under $OUT (at most 8 files; logs are tarred).
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH=/tmp/site:$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
export NVSHMEM_DISABLE_NVLS=1 TPO_EDGE_CACHE=/tmp/tpo-cache
S=/tmp/session
mkdir -p $S $OUT
phase=${1:?phase}

# GPU 0 and cores 0-7 for what is timed; GPU 1 and cores 8-31 for the background jobs (training, conversion)
gpu0() { CUDA_VISIBLE_DEVICES=0 taskset -c 0-7 "$@"; }
bg() { taskset -c 8-31 setsid nohup "$@"; }

case $phase in
start)
  { nvidia-smi -L; python3 -V; python3 -c "import torch, onnxruntime as o, onnxruntime_genai as g, transformers as t, triton; \
print(torch.__version__, o.__version__, o.get_available_providers(), g.__version__, t.__version__, triton.__version__)"; \
    nproc; free -g | head -2; df -h /tmp | tail -1; } > $OUT/versions.txt 2>&1
  cat $OUT/versions.txt
  # training: issue 12 (GPU 1, its own time budget; packs $S/train_out/tpo_session.tar.gz)
  bg python3 scripts/train_gpu_session.py --out $S/train_out --work $S/train --default-gpu 1 \
    --ablation-gpu 1 --budget-s ${TRAIN_BUDGET_S:-1020} > $S/train.log 2>&1 &
  # issue 11 full size: synth -> convert -> export (GQA fp16) -> verify (cuda) -> run (cuda), low CPU priority
  CUDA_VISIBLE_DEVICES=0 OUT=$S/convert_out bg nice -n 10 python3 scripts/convert_fullsize.py all \
    --llm-graph gqa --device cuda --state $S/fullsize > $S/convert.log 2>&1 &
  # the 7B LLM builds of benchmarks/llm_peers.py (CPU bound: the builder), ready for bench2
  bg bash -c "python3 benchmarks/llm_peers.py --phase weights build --jobs 4 --work $S/llm_peers; echo llm_build exit \$?" \
    > $S/llm_build.log 2>&1 &
  gpu0 timeout ${TEST_S:-210} python3 -m pytest -q -p no:cacheprovider -m "gpu and not trt" -rA --timeout 150 \
    tests/test_runtime_gpu.py tests/test_engines.py tests/test_mask_decode.py tests/test_preprocess_triton.py \
    tests/test_video_gpu.py tests/test_llm_gqa_gpu.py > $OUT/gpu_tests.log 2>&1
  echo "gpu tests rc=$?"; grep -E "^(FAILED|ERROR)|passed|failed" $OUT/gpu_tests.log | tail -15
  ;;
bench1)
  gpu0 timeout 150 python3 benchmarks/preprocess.py --quick --decode --out $OUT/preprocess_H200.json > $OUT/preprocess.log 2>&1
  echo "preprocess rc=$?"; tail -25 $OUT/preprocess.log
  # the embedded tiny model with the GQA LLM graph (fp16, CUDA): tpo bench on CUDA (decode under CUDA graphs)
  gpu0 timeout 120 python3 -m runtime.cli export --checkpoint embedded --out $S/tiny_gqa --precision fp16 \
    --llm-graph gqa > $S/tiny_export.log 2>&1 && \
  gpu0 timeout 120 python3 -m runtime.cli bench $S/tiny_gqa --device cuda --size 1080x1920 --iters 30 --tokens 64 \
    --out $OUT/runtime_bench_tiny_gqa_cuda_H200.json > $OUT/tiny_bench.log 2>&1
  echo "tiny bench rc=$?"; tail -30 $OUT/tiny_bench.log; tail -3 $S/tiny_export.log
  # streaming at 1080p30 with tracking on every frame: re-asks in the background vs none vs on the frame (issue 10)
  gpu0 timeout 150 python3 benchmarks/stream_latency.py --export $S/tiny_gqa --device cuda --seconds 12 \
    --out $OUT/stream_latency_H200.json > $OUT/stream_latency.log 2>&1
  echo "stream latency rc=$?"; tail -15 $OUT/stream_latency.log
  tail -5 $S/llm_build.log; tail -4 $S/convert.log; tail -3 $S/train.log
  ;;
bench2)
  for i in $(seq 240); do grep -q "llm_build exit" $S/llm_build.log 2>/dev/null && break; sleep 1; done
  cp $S/llm_build.log $OUT/
  gpu0 timeout 420 python3 benchmarks/llm_peers.py --phase bench --work $S/llm_peers --out $OUT > $OUT/llm_bench.log 2>&1
  echo "llm peers rc=$?"; tail -30 $OUT/llm_bench.log
  ;;
collect)
  for i in $(seq ${WAIT_S:-240}); do [ -f $S/train_out/summary.txt ] && break; sleep 1; done
  tail -25 $S/train.log; tail -15 $S/convert.log
  cp $S/train_out/tpo_session.tar.gz $S/train_out/summary.txt $OUT/ 2>/dev/null
  cp $S/convert_out/convert_fullsize.json $OUT/ 2>/dev/null
  tar czf $OUT/session_logs.tgz -C $S train.log convert.log 2>/dev/null
  ls -la $OUT
  ;;
bench3)
  tail -5 $S/convert.log
  gpu0 timeout 400 python3 benchmarks/e2e_7b.py --phase bench --export $S/fullsize/export --reps 5 \
    > $OUT/e2e_bench.log 2>&1
  echo "e2e rc=$?"; tail -45 $OUT/e2e_bench.log
  ;;
*) echo "unknown phase $phase"; exit 2 ;;
esac
