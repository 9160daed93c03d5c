#!/usr/bin/env bash
# GPU figures for docs/performance.md (issue 6): resnet50 training step on synthetic data with bf16 and
# channels_last, visionzoo against timm (its benchmark.py --bench train: timm's train.py step on synthetic
# data), the fraction of the GPU's dense bf16 peak the step reaches, and the input pipeline with JPEGs
# decoded by the workers (--decode fast) against nvJPEG on the GPU (--decode device), and what a resnet50
# teacher costs a resnet18 student's training step (--teacher, issue 25).
# Usage: TIMM_BENCHMARK=path/to/timm/benchmark.py PEAK_TFLOPS=989 bash tools/gpu_perf.sh OUT [JPEG_DIR]
# PEAK_TFLOPS: dense bf16 tensor-core peak (H100 SXM and H200: 989; H100 PCIe: 756; A100: 312).
set -euo pipefail
out=${1:?usage: gpu_perf.sh OUT [JPEG_DIR]}; jpegs=${2:-}
peak=${PEAK_TFLOPS:-989}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"

for bs in 128 256; do
  visionzoo train --dummy --model resnet50 --img-size 224 --batch-size "$bs" --epochs 1 --iters 120 \
    --perf-warmup-steps 20 --workers 8 --device cuda --eval-every 0 --no-progress \
    --output "$out/vz-r50-b$bs" > "$out/vz-r50-b$bs.log" 2>&1  # amp and channels_last: the CUDA defaults
  if [[ -n "${TIMM_BENCHMARK:-}" ]]; then
    python "$TIMM_BENCHMARK" --model resnet50 --bench train --img-size 224 -b "$bs" --num-warm-iter 20 \
      --num-bench-iter 100 --device cuda --precision amp_bfloat16 --channels-last \
      > "$out/timm-r50-b$bs.log" 2>&1
  fi
done

python - "$out" "$peak" <<'PY'
import json, re, sys
from pathlib import Path
out, peak = Path(sys.argv[1]), float(sys.argv[2])
flops_per_image = 3 * 4.1e9 * 2  # forward 4.1 GMACs at 224 px; a training step is about 3x; 2 FLOPs per MAC
rows = []
for run in sorted(out.glob("vz-r50-b*/metrics.jsonl")):
    bs = run.parent.name.split("-b")[-1]
    vz = json.loads(run.read_text().splitlines()[-1])["images_per_sec"]
    timm_log = out / f"timm-r50-b{bs}.log"
    timm = None
    if timm_log.exists():
        found = re.findall(r'"train_samples_per_sec":\s*([\d.]+)', timm_log.read_text())
        timm = float(found[-1]) if found else None
    rows.append({"batch": int(bs), "visionzoo_images_per_sec": vz, "timm_images_per_sec": timm,
                 "ratio": vz / timm if timm else None, "fraction_of_bf16_peak": vz * flops_per_image / (peak * 1e12)})
for r in rows:
    print(r)
(out / "r50_train.json").write_text(json.dumps(rows, indent=2))
PY

# distillation: the teacher's forward on every batch, in the student's bf16 and channels_last
python -c "import sys, torch, visionzoo; torch.save(visionzoo.create_model('resnet50').state_dict(), sys.argv[1])" \
  "$out/teacher-r50.pth"
for teacher in none r50; do
  extra=(); [[ $teacher == r50 ]] && extra=(--teacher "$out/teacher-r50.pth" --teacher-model resnet50)
  visionzoo train --dummy --model resnet18 --img-size 224 --batch-size 256 --epochs 1 --iters 120 \
    --perf-warmup-steps 20 --workers 8 --device cuda --eval-every 0 --no-progress "${extra[@]}" \
    --output "$out/vz-r18-teacher-$teacher" > "$out/vz-r18-teacher-$teacher.log" 2>&1
  echo "resnet18 student, teacher $teacher: $(tail -1 "$out/vz-r18-teacher-$teacher/metrics.jsonl" | \
    python -c 'import json, sys; print(round(json.load(sys.stdin)["images_per_sec"]), "images/s")')"
done

if [[ -n "$jpegs" ]]; then
  for size in 224 128; do
    for dec in fast device; do
      visionzoo bench-data --data "$jpegs" --img-size "$size" --workers 8 --batch-size 256 --batches 40 --warmup 5 \
        --decode "$dec" --device cuda --baseline --json "$out/bench-data-$dec-$size.json" --no-progress
    done
  done
fi

# serve (issue 27): resnet18 on the GPU behind HTTP, dynamic batching against --max-batch 1 at 32 clients
# (on a 2-core CPU the model's own batch-32 speed-up is 1.09x, which bounds the server's: docs/inference.md)
python "$(dirname "$0")/make_jpeg_set.py" "$out/serve-jpgs" --train 64 --val 0 --classes 2 > /dev/null
mkdir -p "$out/serve-images" && find "$out/serve-jpgs" -name '*.jpg' -exec cp {} "$out/serve-images/" \;
visionzoo train --dummy --model resnet18 --img-size 224 --batch-size 32 --epochs 1 --iters 2 --workers 2 \
  --device cuda --eval-every 0 --no-progress --output "$out/serve-r18" > "$out/serve-r18.log" 2>&1
for mb in 32 1; do
  visionzoo bench-serve "$out/serve-r18/last.pth" --images "$out/serve-images" --concurrency 1,32 --requests 1000 \
    --no-progress --server-args="--device cuda --precision bf16 --decode-threads 12 --max-batch $mb" \
    --json "$out/serve-mb$mb.json" | tee "$out/serve-mb$mb.txt"
done
