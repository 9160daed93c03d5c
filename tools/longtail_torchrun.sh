#!/usr/bin/env bash
# OLTR stage 2 under torchrun with 2 CPU processes beside the one-process run of tools/longtail_compare.sh
# (same stage-1 checkpoint, same settings; made here if that script has not run for OUT and SEED).
# Usage: bash tools/longtail_torchrun.sh OUT [SEED]; then python tools/longtail_table.py OUT --torchrun
set -euo pipefail
source "$(dirname "$0")/longtail_common.sh"
[[ -f "$r/stage1/final_model_checkpoint.pth" ]] || visionzoo train "${common[@]}" "${s1[@]}" --output "$r/stage1"
[[ -f "$r/oltr_stage2/last.pth" ]] || visionzoo train "${common[@]}" "${s2[@]}" --output "$r/oltr_stage2"
OMP_NUM_THREADS=1 torchrun --standalone --nproc-per-node 2 -m visionzoo train "${common[@]}" "${s2[@]}" \
  --output "$r/oltr_stage2_2p"
for m in oltr_stage2 oltr_stage2_2p; do
  for t in 0.1 0.5; do
    [[ -f "$r/$m.eval$t.json" ]] || visionzoo eval --checkpoint "$r/$m/last.pth" "${ev[@]}" --open-threshold $t \
      --json "$r/$m.eval$t.json"
  done
done
