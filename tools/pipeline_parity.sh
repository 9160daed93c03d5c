#!/usr/bin/env bash
# Accuracy check of the fast input pipeline: the built-in digits re-encoded as 256x256 quality-90 JPEGs
# (so training crops decode at 1/2..1/8 DCT scale), the demo recipe (resnet18 at 32 px, 8 epochs) with
# --decode fast and --decode pil (DECODERS="fast pil device" adds decoding on the device), same seed, same
# everything else. Usage: bash tools/pipeline_parity.sh OUT [SEED...]
set -euo pipefail
out=${1:-pipeline-parity}; shift || true
seeds=("${@:-0}")
[[ -d "$out/digits-jpg" ]] || python "$(dirname "$0")/make_digits_jpg.py" "$out/digits-jpg"
for s in "${seeds[@]}"; do
  for d in ${DECODERS:-fast pil}; do
    [[ -f "$out/s$s-$d/summary.json" ]] || visionzoo train --recipe demo --data "$out/digits-jpg" --device cpu \
      --no-progress --seed "$s" --decode "$d" --output "$out/s$s-$d"
  done
done
python - "$out" <<'PY'
import json, sys
from pathlib import Path
rows = {}
for p in sorted(Path(sys.argv[1]).glob("s*-*/summary.json")):
    seed, dec = p.parent.name.split("-")
    last = json.loads(p.read_text())["last"]
    rows.setdefault(dec, []).append((seed, last["val_top1"], last["images_per_sec"]))
for dec, r in rows.items():
    print(dec, "val top-1 per seed:", [round(t, 2) for _, t, _ in r], "images/s (last epoch):", [round(v) for *_, v in r])
PY
