#!/usr/bin/env bash
# Issue 26: what gradient checkpointing saves in a training step. `visionzoo bench --mode train` of MODEL at IMG px,
# batch BATCH, without and with --grad-checkpointing, each in its own process (a process's resident memory keeps
# what an earlier run freed, so the two must not share one). Prints both peaks (resident memory during the timed
# steps on CPU, torch's allocator peak on CUDA), images/s and the ratio; writes OUT/{off,on}.json.
# Usage: bash tools/grad_ckpt_memory.sh OUT   (MODEL vit_small_patch16_224, IMG 224, BATCH 32, DEVICE cpu)
# glibc's malloc raises its mmap threshold as large blocks are freed, after which freed activations stay in the
# heap and resident: the peak then counts memory no tensor holds (3153 -> 2085 MB, 0.66x, without this). A fixed
# 128 KiB threshold returns every large block on free, so resident memory follows what is live.
export MALLOC_MMAP_THRESHOLD_=${MALLOC_MMAP_THRESHOLD_:-131072}
set -euo pipefail
out=${1:?usage: grad_ckpt_memory.sh OUT}
model=${MODEL:-vit_small_patch16_224}; img=${IMG:-224}; batch=${BATCH:-32}; device=${DEVICE:-cpu}
mkdir -p "$out"
common=(--model "$model" --mode train --batch-sizes "$batch" --img-size "$img" --warmup 1 --iters "${ITERS:-3}"
        --device "$device")
visionzoo bench "${common[@]}" --json "$out/off.json" > "$out/off.txt"
visionzoo bench "${common[@]}" --grad-checkpointing --json "$out/on.json" > "$out/on.txt"
python - "$out" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
off, on = (json.loads((out / f"{k}.json").read_text())["rows"][0] for k in ("off", "on"))
print(f"peak memory {off['peak_mem_mb']:.0f} MB -> {on['peak_mem_mb']:.0f} MB with --grad-checkpointing "
      f"({on['peak_mem_mb'] / off['peak_mem_mb']:.2f}x); images/s {off['images_per_s']:.1f} -> {on['images_per_s']:.1f}")
PY
