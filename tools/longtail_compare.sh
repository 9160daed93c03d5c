#!/usr/bin/env bash
# The comparison table in docs/longtail.md: every long-tail method on a long-tailed version of the
# built-in digits (real handwritten digits), made by make-lt. Usage: bash tools/longtail_compare.sh OUT [SEED]
set -euo pipefail
source "$(dirname "$0")/longtail_common.sh"
visionzoo train "${common[@]}" "${s1[@]}" --output "$r/stage1"
visionzoo train "${common[@]}" "${s1[@]}" --loss balanced_softmax --output "$r/balanced_softmax"
visionzoo train "${common[@]}" "${s1[@]}" --sampler class_balanced --output "$r/class_balanced"
visionzoo train "${common[@]}" "${s1[@]}" --sampler sqrt --output "$r/sqrt"
visionzoo train "${common[@]}" "${s2[@]}" --output "$r/oltr_stage2"
visionzoo train "${common[@]}" --model resnet10 --epochs 6 --lr 0.1 --sched step --step-size 2 --sampler class_balanced \
  --init-from "$r/stage1/final_model_checkpoint.pth" --train-scope classifier --reset-classifier --output "$r/crt"
visionzoo tau-norm --checkpoint "$r/stage1/last.pth" --tau 0,0.5,1,1.5,2 --output "$r/tau_norm.pth" \
  --data "$root" --val-list "$out/lt/val.txt" --workers 0 --device cpu --json "$r/tau_norm.json"
for m in stage1 balanced_softmax class_balanced sqrt oltr_stage2 crt; do
  for t in 0.1 0.5; do visionzoo eval --checkpoint "$r/$m/last.pth" "${ev[@]}" --open-threshold $t --json "$r/$m.eval$t.json"; done
done
for t in 0.1 0.5; do
  visionzoo eval --checkpoint "$r/tau_norm.pth" "${ev[@]}" --open-threshold $t --json "$r/tau_norm.eval$t.json" \
    --train-list "$out/lt/train.txt" --data "$root"
  visionzoo eval --checkpoint "$r/stage1/last.pth" "${ev[@]}" --open-threshold $t --logit-adjust 1 \
    --json "$r/logit_adjust.eval$t.json"
done
visionzoo eval --checkpoint "$r/stage1/last.pth" "${ev[@]}" --plot "$out/stage1_s$seed.png" > /dev/null
visionzoo eval --checkpoint "$r/oltr_stage2/last.pth" "${ev[@]}" --plot "$out/oltr_stage2_s$seed.png" > /dev/null
