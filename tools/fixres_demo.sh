#!/usr/bin/env bash
# The measured FixRes demonstration in docs/fixres.md, on the built-in digits (real handwritten digits).
# Usage: bash tools/fixres_demo.sh OUT [SEED]. Per seed: resnet18 trained at 24 px, fine-tuned at 32 px by
# finetune-res, and a test-size sweep of both.
set -euo pipefail
out=${1:-fixres-demo}; seed=${2:-0}
root=$(python -c "from visionzoo.data.builtin import materialize; print(materialize('digits'))")
r=$out/s$seed
common=(--data "$root" --model resnet18 --batch-size 64 --workers 0 --device cpu --no-progress --seed "$seed")
train=("${common[@]}" --epochs 20 --lr 0.1 --sched cosine --weight-decay 5e-4 --scale 0.2,1.0 --eval-every 0)
visionzoo train "${train[@]}" --train-size 24 --output "$r/train24"
visionzoo finetune-res --checkpoint "$r/train24/last.pth" --test-size 32 "${common[@]}" --epochs 10 --lr 0.01 \
  --output "$r/train24_ft32"
visionzoo eval --checkpoint "$r/train24/last.pth" --checkpoint "$r/train24_ft32/last.pth" \
  --sizes 16,20,24,28,32,36,40,48 --device cpu --no-progress --json "$r/sweep.json" --plot "$r/sweep.png"
