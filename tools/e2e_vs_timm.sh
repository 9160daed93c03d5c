#!/usr/bin/env bash
# End to end on real JPEGs, visionzoo against timm's train.py, one after the other in one run: resnet18 at
# 64 px, batch 64, 2 epochs, fp32 then bf16 autocast + channels_last; prints the second epoch's rates.
# Usage: TIMM_TRAIN=path/to/timm/train.py bash tools/e2e_vs_timm.sh OUT REP [DATA]   (WORKERS=2 by default)
# DATA: an ImageFolder with train/ and val/ (python tools/make_jpeg_set.py DATA --train 2000 --val 200).
set -euo pipefail
out=${1:?usage: e2e_vs_timm.sh OUT REP [DATA]}; rep=${2:-1}; data=${3:-/tmp/jpg2}
timm_train=${TIMM_TRAIN:?set TIMM_TRAIN to the path of train.py from pytorch-image-models}
workers=${WORKERS:-2}
mkdir -p "$out"
for prec in fp32 bf16; do
  vzflags=(); timmflags=()
  if [[ $prec == bf16 ]]; then vzflags=(--precision bf16 --channels-last); timmflags=(--amp --amp-dtype bfloat16 --channels-last); fi
  rm -rf "$out/vz_${prec}_$rep"
  visionzoo train --data "$data" --model resnet18 --img-size 64 --batch-size 64 --epochs 2 --workers "$workers" \
    --lr 0.1 --eval-every 0 --device cpu --output "$out/vz_${prec}_$rep" --no-progress "${vzflags[@]}" \
    > "$out/vz_${prec}_$rep.log" 2>&1 || { echo "visionzoo train failed: $out/vz_${prec}_$rep.log"; exit 1; }
  (cd "$(dirname "$timm_train")" && python train.py --data-dir "$data" --val-split val --model resnet18 --img-size 64 \
    -b 64 --epochs 2 --workers "$workers" --color-jitter 0 --smoothing 0 --lr 0.1 --warmup-epochs 0 --log-interval 10 \
    --device cpu --output "$out/timm_${prec}_$rep" "${timmflags[@]}" > "$out/timm_${prec}_$rep.log" 2>&1) \
    || { echo "timm train.py failed: $out/timm_${prec}_$rep.log"; exit 1; }
  python - "$out" "$prec" "$rep" <<'PY'
import json, re, sys
out, prec, rep = sys.argv[1:]
r = [json.loads(line) for line in open(f"{out}/vz_{prec}_{rep}/metrics.jsonl")][-1]
last = [line for line in open(f"{out}/timm_{prec}_{rep}.log") if line.startswith("Train: 1 ")][-1]
timm = float(re.findall(r"\(\s*[\d.]+s,\s*([\d.]+)/s\)", last)[0])  # timm's running epoch average
vz = r["steps"] * 64 / r["epoch_time"]
print(f"{prec} rep {rep}: visionzoo {vz:.1f} images/s (epoch wall; steady {r['images_per_sec']:.1f}), "
      f"timm {timm:.1f} (epoch avg), ratio {vz / timm:.2f}")
PY
done
