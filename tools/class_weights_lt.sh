#!/usr/bin/env bash
# Class weights on the long-tailed digits (docs/longtail.md "Class weights"): plain cross-entropy and
# --class-weights balanced, same seed and settings (OLTR stage 1's: ResNet-10, 12 epochs, 32 px; the long-tail
# set of tools/longtail_compare.sh), then the many/medium/few table and which classes gained.
# Usage: bash tools/class_weights_lt.sh OUT [SEED ...]   (default seed 0; about 3 minutes a seed on 2 CPU cores)
#   CW_RULES="balanced sqrt" adds rules; CW_EPOCHS=N shortens the runs (a smoke test, not the measurement).
# An OUT shared with tools/longtail_compare.sh reuses its lists; the plain run is its stage 1 run (same flags).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
OUT=${1:-cw-lt}
shift || true
seeds=("$@")
[[ ${#seeds[@]} -gt 0 ]] || seeds=(0)
rules=(${CW_RULES:-balanced})
start=$SECONDS
tag=${CW_EPOCHS:+_e$CW_EPOCHS}  # a shortened run's folders are its own
# a finished run (final_model_checkpoint.pth) is reused, an interrupted one resumed
run() { [[ -f "$1/final_model_checkpoint.pth" ]] || visionzoo train "${common[@]}" "${s1[@]}" "${@:2}" --output "$1" --resume auto; }
for seed in "${seeds[@]}"; do
  source "$here/longtail_common.sh" "$OUT" "$seed"
  [[ -z ${CW_EPOCHS:-} ]] || s1=(--model resnet10 --epochs "$CW_EPOCHS" --lr 0.1 --sched step --step-size 4)
  run "$r/stage1$tag"
  for rule in "${rules[@]}"; do
    run "$r/cw_$rule$tag" --class-weights "$rule"
    grep -m1 "class weights" "$r/cw_$rule$tag/train.log" | sed 's/^[0-9-]* [0-9:,]* INFO /  /'
  done
  for m in stage1 "${rules[@]/#/cw_}"; do
    visionzoo eval --checkpoint "$r/$m$tag/last.pth" "${ev[@]}" --json "$r/$m$tag.cw.json" > /dev/null
  done
done
python - "$OUT" "$tag" "${seeds[*]}" "${rules[@]}" <<'EOF'
import json, sys
from pathlib import Path
import numpy as np
out, tag, rules = Path(sys.argv[1]), sys.argv[2], sys.argv[4:]
seeds = [out / f"s{seed}" for seed in sys.argv[3].split()]
methods = [(f"stage1{tag}", "plain cross-entropy")] + [(f"cw_{r}{tag}", f"--class-weights {r}") for r in rules]
keys = ("top1", "many_shot", "medium_shot", "few_shot")
print("\n| method | seed | top-1 | many | medium | few |\n|---|---|---|---|---|---|")
for key, label in methods:
    runs = {s.name: json.loads((s / f"{key}.cw.json").read_text()) for s in seeds if (s / f"{key}.cw.json").exists()}
    for name, r in runs.items():
        print(f"| {label} | {name} | " + " | ".join("-" if r[k] is None else f"{r[k]:.1f}" for k in keys) + " |")
    if len(runs) > 1:
        cells = []
        for k in keys:
            v = [r[k] for r in runs.values() if r[k] is not None]
            cells.append(f"{np.mean(v):.1f} ± {np.std(v):.1f}" if v else "-")
        print(f"| {label} | mean ± sd | " + " | ".join(cells) + " |")
r0 = json.loads((seeds[0] / f"stage1{tag}.cw.json").read_text())
print(f"\nshot groups by training images: many > {r0['many_threshold']}, few < {r0['few_threshold']} "
      f"({r0['many_classes']} many, {r0['medium_classes']} medium, {r0['few_classes']} few classes); "
      "accuracy in percent on test.txt")
for key, label in methods[1:]:
    few = [[json.loads((s / f"{k}.cw.json").read_text())["few_shot"] or 0.0 for k in (f"stage1{tag}", key)]
           for s in seeds]
    ups = [b > a for a, b in few]
    print(f"{label}: few-shot above plain cross-entropy in {sum(ups)} of {len(ups)} seed(s)")
EOF
for rule in "${rules[@]}"; do
  echo; echo "per-class recall, seed ${seeds[0]}: plain cross-entropy -> --class-weights $rule"
  python "$here/per_class_delta.py" "$OUT/s${seeds[0]}/stage1$tag.cw.json" "$OUT/s${seeds[0]}/cw_$rule$tag.cw.json" \
    --names "CE,$rule"
done
echo "took $((SECONDS - start)) s"
