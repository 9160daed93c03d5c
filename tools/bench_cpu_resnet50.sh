#!/usr/bin/env bash
# The CPU table in docs/performance.md: resnet50 at 224, batch 1-32, visionzoo bench (eager, compile,
# onnxruntime, int8) and timm's benchmark.py on the same settings. Run on an idle machine.
#   TIMM_BENCHMARK=/path/to/pytorch-image-models/benchmark.py bash tools/bench_cpu_resnet50.sh OUTDIR
set -euo pipefail
out=${1:-bench-resnet50-cpu}
mkdir -p "$out"
bs=1,2,4,8,16,32
common=(--model resnet50 --img-size 224 --batch-sizes $bs --warmup 3 --iters 10 --device cpu)
visionzoo bench "${common[@]}" --backend eager,compile,onnxruntime --precision fp32 \
  --json "$out/fp32.json" --csv "$out/fp32.csv" --plot "$out/fp32.png"
visionzoo bench "${common[@]}" --backend compile,onnxruntime --precision int8 \
  --json "$out/int8.json" --csv "$out/int8.csv" --plot "$out/int8.png"
if [[ -n "${TIMM_BENCHMARK:-}" ]]; then
  for b in ${bs//,/ }; do
    python "$TIMM_BENCHMARK" --model resnet50 --bench inference --img-size 224 -b "$b" --num-warm-iter 3 \
      --num-bench-iter 10 --device cpu --no-retry --results-file "$out/timm_eager_b$b.csv"
    python "$TIMM_BENCHMARK" --model resnet50 --bench inference --img-size 224 -b "$b" --num-warm-iter 3 \
      --num-bench-iter 10 --device cpu --no-retry --torchcompile --results-file "$out/timm_compile_b$b.csv"
  done
fi
