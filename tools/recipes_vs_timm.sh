#!/usr/bin/env bash
# Side by side on real JPEGs: visionzoo against timm's train.py, the same recipe flags, one after the other in
# one run: resnet18 at 64 px, batch 64, EPOCHS epochs (15), seeds SEEDS (0 1 2), CPU fp32, two recipes:
#   modern: AdamW lr 1e-3 wd 0.05 (no decay on norm/bias), cosine with 2 warm-up epochs from 1e-5, label
#           smoothing 0.1, mixup 0.2, cutmix 1.0, RandAugment m9 n2, random erasing 0.25 (mean colour), EMA 0.99
#           with warm-up (the EMA weights are the ones evaluated and reported by both tools)
#   seed:   the vision_classification seed's recipe: SGD lr 0.05 (0.2 at batch 256), momentum 0.9, wd 1e-4,
#           crop + flip only (timm's cosine-free step schedule is the nearest to the seed's linear decay: both
#           run linear here via timm's --sched poly --decay-rate 1)
# Writes OUT/results.csv (tool, recipe, seed, final top-1, best top-1, wall seconds) and prints a summary.
# Usage: TIMM_TRAIN=path/to/timm/train.py bash tools/recipes_vs_timm.sh OUT DATA
# DATA: an ImageFolder with train/ and val/, e.g. python tools/make_digits_jpg.py DATA (the built-in digits,
# real handwritten scans, re-encoded as 256 px JPEGs).
set -euo pipefail
out=${1:?usage: recipes_vs_timm.sh OUT DATA}; data=${2:?usage: recipes_vs_timm.sh OUT DATA}
timm_train=${TIMM_TRAIN:?set TIMM_TRAIN to the path of train.py from pytorch-image-models}
epochs=${EPOCHS:-15}; seeds=${SEEDS:-0 1 2}; recipes=${RECIPES:-modern seed}; workers=${WORKERS:-2}
mkdir -p "$out"
data=$(cd "$data" && pwd); out=$(cd "$out" && pwd)
classes=$(find "$data/train" -mindepth 1 -maxdepth 1 -type d | wc -l)  # timm builds 1000 outputs unless told
common_vz=(--data "$data" --model resnet18 --img-size 64 --crop-pct 0.875 --interpolation bilinear --batch-size 64
           --epochs "$epochs" --workers "$workers" --device cpu --precision fp32 --no-progress --color-jitter 0)
common_timm=(--data-dir "$data" --train-split train --val-split val --model resnet18 --num-classes "$classes"
             --img-size 64 --crop-pct 0.875 --train-interpolation bilinear --interpolation bilinear -b 64
             --epochs "$epochs" --workers "$workers" --device cpu --color-jitter 0 --checkpoint-hist 1 --log-interval 50)
modern_vz=(--opt adamw --lr 1e-3 --weight-decay 0.05 --no-decay-norm-bias --sched cosine --warmup-epochs 2
           --warmup-start-factor 0.01 --label-smoothing 0.1 --mixup 0.2 --cutmix 1.0 --auto-augment ra
           --ra-magnitude 9 --ra-ops 2 --random-erase 0.25 --ema --ema-decay 0.99 --ema-warmup)
modern_timm=(--opt adamw --lr 1e-3 --weight-decay 0.05 --sched cosine --sched-on-updates --warmup-epochs 2
             --warmup-lr 1e-5 --smoothing 0.1 --mixup 0.2 --cutmix 1.0 --aa rand-m9-n2 --reprob 0.25 --remode const
             --model-ema --model-ema-decay 0.99 --model-ema-warmup)
seed_vz=(--opt sgd --lr 0.05 --momentum 0.9 --weight-decay 1e-4 --sched linear --warmup-epochs 0 --label-smoothing 0)
seed_timm=(--opt momentum --lr 0.05 --momentum 0.9 --weight-decay 1e-4 --sched poly --decay-rate 1 --sched-on-updates
           --warmup-epochs 0 --smoothing 0)
[[ -f "$out/results.csv" ]] || echo "tool,recipe,seed,final_top1,best_top1,wall_s" > "$out/results.csv"
for seed in $seeds; do
  for recipe in $recipes; do
    vz_extra="${recipe}_vz[@]"; timm_extra="${recipe}_timm[@]"
    run="vz_${recipe}_$seed"; rm -rf "${out:?}/$run"
    t0=$(date +%s.%N)
    visionzoo train "${common_vz[@]}" "${!vz_extra}" --seed "$seed" --output "$out/$run" > "$out/$run.log" 2>&1 \
      || { echo "visionzoo train failed: $out/$run.log"; exit 1; }
    t1=$(date +%s.%N)
    python - "$out/$run" "$recipe" "$seed" "$(echo "$t1 - $t0" | bc)" >> "$out/results.csv" <<'PY'
import json, sys
run, recipe, seed, wall = sys.argv[1:]
rows = [json.loads(line) for line in open(f"{run}/metrics.jsonl") if '"val_top1"' in line]
key = "val_ema_top1" if "val_ema_top1" in rows[-1] else "val_top1"
print(f"visionzoo,{recipe},{seed},{rows[-1][key]:.2f},{max(r[key] for r in rows):.2f},{float(wall):.1f}")
PY
    run="timm_${recipe}_$seed"; rm -rf "${out:?}/$run"
    t0=$(date +%s.%N)
    (cd "$(dirname "$timm_train")" && python train.py "${common_timm[@]}" "${!timm_extra}" --seed "$seed" \
      --output "$out/$run" --experiment x > "$out/$run.log" 2>&1) || { echo "timm train.py failed: $out/$run.log"; exit 1; }
    t1=$(date +%s.%N)
    python - "$out/$run/x/summary.csv" "$recipe" "$seed" "$(echo "$t1 - $t0" | bc)" >> "$out/results.csv" <<'PY'
import csv, sys
path, recipe, seed, wall = sys.argv[1:]
rows = list(csv.DictReader(open(path)))
print(f"timm,{recipe},{seed},{float(rows[-1]['eval_top1']):.2f},{max(float(r['eval_top1']) for r in rows):.2f},"
      f"{float(wall):.1f}")
PY
    tail -2 "$out/results.csv"
  done
done
python - "$out/results.csv" "$epochs" <<'PY'
import csv, statistics as st, sys
rows = list(csv.DictReader(open(sys.argv[1]))); epochs = int(sys.argv[2])
for recipe in dict.fromkeys(r["recipe"] for r in rows):
    for tool in ("visionzoo", "timm"):
        rs = [r for r in rows if r["tool"] == tool and r["recipe"] == recipe]
        if not rs:
            continue
        top = [float(r["final_top1"]) for r in rs]; wall = [float(r["wall_s"]) for r in rs]
        sd = st.stdev(top) if len(top) > 1 else 0.0
        print(f"{recipe:7s} {tool:9s} seeds {len(rs)}: final top-1 {st.mean(top):.2f} +- {sd:.2f} "
              f"({', '.join(f'{t:.2f}' for t in top)}), wall {st.mean(wall):.0f} s = {st.mean(wall) / epochs:.1f} s/epoch")
PY
