#!/usr/bin/env bash
# Top-1 of the same checkpoints evaluated with the reference pixels (the default: Pillow's full decode,
# torchvision's Resize + CenterCrop) and with --decode fast (JPEGs decoded at a reduced DCT scale), on a
# real labelled set: the built-in digits re-encoded as 256x256 quality-90 JPEGs, evaluated at 32 px, so the
# fast path decodes at 1/8 scale. Trains the demo recipe once per seed.
# Usage: bash tools/eval_decode_parity.sh OUT [SEED...]
set -euo pipefail
out=${1:-eval-decode-parity}; shift || true
seeds=("${@:-0}")
[[ -d "$out/digits-jpg" ]] || python "$(dirname "$0")/make_digits_jpg.py" "$out/digits-jpg"
for s in "${seeds[@]}"; do
  run="$out/s$s"
  [[ -f "$run/summary.json" ]] || visionzoo train --recipe demo --data "$out/digits-jpg" --device cpu --no-progress \
    --seed "$s" --output "$run"
  for d in pil fast; do
    [[ -f "$run/eval-$d.json" ]] || visionzoo eval --checkpoint "$run/best.pth" --data "$out/digits-jpg" \
      --decode "$d" --device cpu --no-progress --json "$run/eval-$d.json" > /dev/null
  done
done
python - "$out" <<'PY'
import json, sys
from pathlib import Path
print("seed  reference (pil) top-1  fast top-1  difference (points)")
for run in sorted(Path(sys.argv[1]).glob("s*")):
    ref, fast = (json.loads((run / f"eval-{d}.json").read_text()) for d in ("pil", "fast"))
    print(f"{run.name[1:]:>4}  {ref['top1']:>20.2f}  {fast['top1']:>10.2f}  {fast['top1'] - ref['top1']:>+19.2f}")
PY
