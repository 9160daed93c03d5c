#!/usr/bin/env bash
# Issue 27's measurements, one after the other on one machine: resnet18 at 224 px exported to ONNX (dynamic batch)
# and served on the onnxruntime backend.
#   1. `visionzoo bench` of the file at batch 1 and 32: the model alone, the ceiling
#   2. bench-serve with dynamic batching (the defaults) at 1 and 32 concurrent clients
#   3. the same server with --max-batch 1 at 32 clients
#   4. 2,000 requests at 64 clients, 10% bad (garbage, truncated JPEG, 20,000 x 20,000 PNG bomb): answers checked,
#      the server's RSS before and after
#   5. SIGTERM during load at 32 clients (tools/serve_sigterm.py): every accepted request answered, exit code 0
# Images: 500x375 q90 JPEGs of real photos (tools/make_jpeg_set.py), as camera photos cost to decode.
# Weights: resnet18 with its initial (random, seeded) weights: speed and answers' equality do not depend on them.
# Writes OUT/{bench,dynamic,batch1,bad,sigterm}.json and OUT/result.json (the ratios); prints a table.
# Usage: bash tools/serve_bench.sh OUT   (REQUESTS per level, default 300)
set -euo pipefail
out=${1:?usage: serve_bench.sh OUT}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"; out=$(cd "$out" && pwd)
n=${REQUESTS:-300}
if [[ ! -f $out/r18.onnx ]]; then
  python -c "import torch, visionzoo; torch.manual_seed(0); torch.save(visionzoo.create_model('resnet18').state_dict(), '$out/r18.pth')"
  visionzoo export --model resnet18 --weights "$out/r18.pth" --format onnx --dynamic-batch --output "$out/r18.onnx"
fi
if [[ ! -d $out/images ]]; then
  python "$here/make_jpeg_set.py" "$out/jpgs" --train 40 --val 0 --classes 2 > /dev/null
  mkdir -p "$out/images" && find "$out/jpgs" -name '*.jpg' -exec cp {} "$out/images/" \;
fi
model=$out/r18.onnx; images=$out/images
visionzoo bench --checkpoint "$model" --backend onnxruntime --batch-sizes 1,32 --iters 20 --warmup 3 \
    --json "$out/bench.json"
visionzoo bench-serve "$model" --images "$images" --concurrency 1,32 --requests "$n" --no-progress \
    --json "$out/dynamic.json"
visionzoo bench-serve "$model" --images "$images" --concurrency 32 --requests "$n" --server-args="--max-batch 1" \
    --no-progress --json "$out/batch1.json"
visionzoo bench-serve "$model" --images "$images" --concurrency 64 --requests 2000 --bad-fraction 0.1 --no-progress \
    --json "$out/bad.json" || true  # judged below, with the rest
python "$here/serve_sigterm.py" "$model" "$images" "$out/sigterm.json" --concurrency 32 --after 5 || true
python - "$out" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
j = lambda name: json.loads((out / f"{name}.json").read_text())
rows = {r["batch_size"]: r for r in j("bench")["rows"]}
dyn = {lv["concurrency"]: lv for lv in j("dynamic")["levels"]}
one = j("batch1")["levels"][0]
bad = j("bad")["levels"][0]
sig = j("sigterm")
b1_ms = rows[1]["p50_ms"]
res = {
    "machine": "see docs/inference.md", "model": "resnet18 224 px ONNX (onnxruntime fp32)",
    "bench_images_per_s": {b: rows[b]["images_per_s"] for b in rows},
    "bench_batch32_over_batch1": round(rows[32]["images_per_s"] / rows[1]["images_per_s"], 3),
    "serve_32_clients_images_per_s": dyn[32]["images_per_s"], "serve_32_clients_mean_batch": dyn[32]["server_batch_mean"],
    "serve_32_clients_p95_ms": dyn[32]["p95_ms"],
    "serve_max_batch_1_images_per_s": one["images_per_s"],
    "dynamic_over_max_batch_1": round(dyn[32]["images_per_s"] / one["images_per_s"], 3),
    "serve_over_bench_batch32": round(dyn[32]["images_per_s"] / rows[32]["images_per_s"], 3),
    "one_client_p50_ms": dyn[1]["p50_ms"], "bench_batch1_p50_ms": b1_ms,
    "one_client_overhead_ms": round(dyn[1]["p50_ms"] - b1_ms, 2),
    "bad_load": {k: bad[k] for k in ("requests", "good", "bad", "ok", "4xx", "errors", "error_kinds", "wrong",
                                     "server_rss_before_mb", "server_rss_after_mb")},
    "rss_after_over_before": round(bad["server_rss_after_mb"] / bad["server_rss_before_mb"], 3),
    "sigterm": sig,
}
(out / "result.json").write_text(json.dumps(res, indent=1))
print(json.dumps(res, indent=1))
PY
