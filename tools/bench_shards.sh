#!/usr/bin/env bash
# WebDataset shards against the pack format they replace, and both against torchvision's ImageFolder pipeline,
# in one run on one machine: the same 224 px (or IMG) training pipeline, WORKERS loader processes, batch 64.
#   old:    the previous pack format (visionzoo-pack-1, .bin shards), packed and read by the code of OLD_COMMIT
#   shards: the WebDataset shards of `visionzoo pack`, read at random through the sidecar index (--data PACK)
#   stream: the same shards streamed in order from local files (--data file://PACK: tar parsing + shuffle buffer)
#   torchvision: ImageFolder + transforms.v2 + PIL from the JPEG folder (each bench-data --baseline run)
# Each round times old, shards and stream once each (bench-data --baseline: every call times the baseline too).
# Usage: bash tools/bench_shards.sh OUT [ROUNDS]   (env: IMG=224 WORKERS=2 BATCHES=40 OLD_COMMIT=eb444fa
#        NORMALIZE=0: uint8 batches as delivered, the pipeline as the pack issue measured it; 1: normalised)
# Writes OUT/results.csv (round, reader, visionzoo images/s, torchvision images/s, ratio) and prints it.
set -euo pipefail
out=${1:?usage: bench_shards.sh OUT [ROUNDS]}; rounds=${2:-3}
img=${IMG:-224}; workers=${WORKERS:-2}; batches=${BATCHES:-40}; old_commit=${OLD_COMMIT:-eb444fa}
here=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"; out=$(cd "$out" && pwd)
[ -d "$out/jpg" ] || python "$here/tools/make_jpeg_set.py" "$out/jpg" --train 600 --val 100
if [ ! -d "$out/old-src" ]; then
  mkdir -p "$out/old-src" && git -C "$here" archive "$old_commit" src | tar -x -C "$out/old-src"
fi
old() { PYTHONPATH="$out/old-src/src" python -m visionzoo "$@"; }
[ -f "$out/oldpack/pack.json" ] || old pack --data "$out/jpg" --output "$out/oldpack" --max-size 256 --no-progress
[ -f "$out/pack/pack.json" ] || python -m visionzoo pack --data "$out/jpg" --output "$out/pack" --max-size 256 \
  --no-progress
norm=(--no-normalize); [ "${NORMALIZE:-0}" = 1 ] && norm=()
common=(--img-size "$img" --workers "$workers" --batch-size 64 --batches "$batches" --warmup 4 --baseline
        --baseline-data "$out/jpg" --no-progress "${norm[@]}")
echo "round,reader,visionzoo_images_per_s,torchvision_images_per_s,ratio" > "$out/results.csv"
row() {  # round reader json
  python - "$1" "$2" "$3" >> "$out/results.csv" <<'EOF'
import json, sys
r = json.load(open(sys.argv[3]))
print(f"{sys.argv[1]},{sys.argv[2]},{r['visionzoo']['images_per_sec']:.1f},{r['torchvision']['images_per_sec']:.1f},"
      f"{r['ratio']:.2f}")
EOF
}
for round in $(seq 1 "$rounds"); do
  old bench-data --data "$out/oldpack" "${common[@]}" --json "$out/old-$round.json" > /dev/null
  row "$round" old "$out/old-$round.json"
  python -m visionzoo bench-data --data "$out/pack" "${common[@]}" --json "$out/shards-$round.json" > /dev/null
  row "$round" shards "$out/shards-$round.json"
  python -m visionzoo bench-data --data "file://$out/pack" "${common[@]}" --json "$out/stream-$round.json" > /dev/null
  row "$round" stream "$out/stream-$round.json"
done
column -s, -t < "$out/results.csv"
