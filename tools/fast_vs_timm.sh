#!/usr/bin/env bash
# Issue 26, time to accuracy: visionzoo's fast recipe (progressive resizing, FixRes eval size) against timm's
# train.py at a constant size with the same optimizer, schedule and epochs, one run after the other on one machine.
# Data and model are docs/recipes.md's: the built-in digits as 256-px JPEGs (tools/make_digits_jpg.py), resnet18 from
# scratch, batch 64, CPU fp32, EPOCHS (16, the recipe's) epochs.
#   timm:      --img-size FINAL (64) every epoch
#   visionzoo: --recipe fast_resnet18 with the sizes scaled to this data: --img-size-schedule START:FINAL (48:64,
#              the recipe's 160:192 ratio), the recipe's ramp epochs, evaluation at EVAL px (FINAL; `auto`, FixRes'
#              1.15x, cost 20+ points on these digits: 72 px scored 65.6 where 64 px scored 97.2, same weights)
#   visionzoo constant: the same recipe at FINAL px every epoch (the schedule's own effect)
# Both get the recipe's optimizer: SGD momentum 0.9, lr 0.125 per 256 linear (0.03125 at 64), weight decay 5e-5,
# label smoothing 0.1, linear warm-up over 2 epochs from 1e-4 x lr, then linear decay to 0.
# Every epoch's validation top-1 is timestamped as it lands (metrics.jsonl for visionzoo, summary.csv for timm),
# measured from the launch of each command, so both clocks include start-up and evaluation.
# Writes OUT/curves.csv (tool, epoch, seconds, top1), OUT/curves.png (top-1 against seconds) and OUT/result.json.
# Usage: TIMM_TRAIN=path/to/pytorch-image-models/train.py bash tools/fast_vs_timm.sh OUT [DATA]
set -euo pipefail
out=${1:?usage: fast_vs_timm.sh OUT [DATA]}
timm_train=${TIMM_TRAIN:?set TIMM_TRAIN to the path of train.py from pytorch-image-models}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"; out=$(cd "$out" && pwd)
data=${2:-$out/digjpg}
[[ -d $data/train ]] || python "$here/make_digits_jpg.py" "$data" > /dev/null
data=$(cd "$data" && pwd)
epochs=${EPOCHS:-16}; final=${FINAL:-64}; start=${START:-48}; eval=${EVAL:-$final};
ramp=()  # SIZE_START_EPOCHS / SIZE_END_EPOCHS place the ramp; unset: the recipe's (12 at START, 3 at FINAL)
[[ -n ${SIZE_START_EPOCHS:-} ]] && ramp+=(--size-start-epochs "$SIZE_START_EPOCHS")
[[ -n ${SIZE_END_EPOCHS:-} ]] && ramp+=(--size-end-epochs "$SIZE_END_EPOCHS") seed=${SEED:-0}; workers=${WORKERS:-2}
classes=$(find "$data/train" -mindepth 1 -maxdepth 1 -type d | wc -l)

watch_file() {  # FILE KIND T0 OUTCSV: append "epoch,seconds,top1" each time FILE gains an epoch
  python - "$@" <<'PY' &
import csv, json, os, sys, time
path, kind, t0, dest = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
seen = 0
while True:
    rows = []
    try:
        if kind == "vz":
            rows = [json.loads(l) for l in open(path) if l.strip()]
            rows = [r for r in rows if r.get("type") == "epoch" and "val_top1" in r]
            tops = [r["val_top1"] for r in rows]
        else:
            tops = [float(r["eval_top1"]) for r in csv.DictReader(open(path))]
    except (OSError, ValueError, KeyError):
        tops = []
    if len(tops) > seen:
        now = time.time() - t0
        with open(dest, "a") as f:
            for i in range(seen, len(tops)):
                f.write(f"{i + 1},{now:.2f},{tops[i]:.2f}\n")
        seen = len(tops)
    if os.path.exists(dest + ".stop"):
        break
    time.sleep(0.1)
PY
}

run_timed() {  # NAME KIND WATCHED_FILE CMD...: run CMD, timestamping its epochs into OUT/NAME.epochs
  local name=$1 kind=$2 watched=$3; shift 3
  rm -f "$out/$name.epochs" "$out/$name.epochs.stop"
  local t0; t0=$(date +%s.%N)
  watch_file "$watched" "$kind" "$t0" "$out/$name.epochs"; local watcher=$!
  "$@" > "$out/$name.log" 2>&1 || { touch "$out/$name.epochs.stop"; echo "failed: $out/$name.log"; exit 1; }
  local t1; t1=$(date +%s.%N)
  sleep 0.5; touch "$out/$name.epochs.stop"; wait "$watcher"
  echo "$t1 - $t0" | bc > "$out/$name.wall"
}

rm -rf "${out:?}/timm" "${out:?}/vz" "${out:?}/vzc"
run_timed timm timm "$out/timm/x/summary.csv" bash -c "cd '$(dirname "$timm_train")' && python train.py \
  --data-dir '$data' --train-split train --val-split val --model resnet18 --num-classes $classes \
  --img-size $final --crop-pct 0.875 --train-interpolation bilinear --interpolation bilinear -b 64 \
  --epochs $epochs --workers $workers --device cpu --color-jitter 0 --checkpoint-hist 1 --log-interval 50 \
  --opt momentum --lr 0.03125 --momentum 0.9 --weight-decay 5e-5 --smoothing 0.1 --sched poly --decay-rate 1 \
  --sched-on-updates --warmup-epochs 2 --warmup-lr 3.125e-6 --seed $seed --output '$out/timm' --experiment x"
run_timed vz vz "$out/vz/metrics.jsonl" visionzoo train --recipe fast_resnet18 --data "$data" --batch-size 64 \
  --img-size-schedule "$start:$final" "${ramp[@]}" --eval-img-size "$eval" --epochs "$epochs" --workers "$workers" --device cpu \
  --precision fp32 --color-jitter 0 --seed "$seed" --no-progress --output "$out/vz"
run_timed vzc vz "$out/vzc/metrics.jsonl" visionzoo train --recipe fast_resnet18 --data "$data" --batch-size 64 \
  --img-size-schedule none --size-start-epochs none --size-end-epochs none --img-size "$final" --eval-img-size "$eval" \
  --epochs "$epochs" --workers "$workers" --device cpu --precision fp32 --color-jitter 0 --seed "$seed" --no-progress \
  --output "$out/vzc"

python - "$out" <<'PY'
import json, sys
from pathlib import Path
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
out = Path(sys.argv[1])
curves = {}
for tool in ("timm", "vz", "vzc"):
    rows = [line.split(",") for line in (out / f"{tool}.epochs").read_text().split()]
    curves[tool] = [(int(e), float(s), float(t)) for e, s, t in rows]
with open(out / "curves.csv", "w") as f:
    f.write("tool,epoch,seconds,top1\n")
    for tool, rows in curves.items():
        f.writelines(f"{tool},{e},{s},{t}\n" for e, s, t in rows)
target = curves["timm"][-1][2]  # what timm's constant-size run ends at
def first_at(rows, top1):
    return next(((e, s) for e, s, t in rows if t >= top1), (None, None))
timm_epoch, timm_s = first_at(curves["timm"], target)
vz_epoch, vz_s = first_at(curves["vz"], target)
vzc_epoch, vzc_s = first_at(curves["vzc"], target)
summary = json.loads((out / "vz" / "summary.json").read_text())
result = {
    "target_top1": target, "timm_wall_s": float((out / "timm.wall").read_text()),
    "vz_wall_s": float((out / "vz.wall").read_text()),
    "timm_first_reached": {"epoch": timm_epoch, "seconds": timm_s},
    "vz_first_reached": {"epoch": vz_epoch, "seconds": vz_s},
    "vz_constant_first_reached": {"epoch": vzc_epoch, "seconds": vzc_s},
    "vz_constant_wall_s": float((out / "vzc.wall").read_text()), "vz_constant_final_top1": curves["vzc"][-1][2],
    "vz_final_top1": curves["vz"][-1][2], "vz_tta": summary.get("tta"),
}
if vz_s is not None:
    result["ratio_vs_timm_wall"] = vz_s / result["timm_wall_s"]
    result["ratio_vs_timm_time_to_target"] = vz_s / timm_s
(out / "result.json").write_text(json.dumps(result, indent=1))
fig, ax = plt.subplots(figsize=(7, 4.5))
for tool, label in (("timm", "timm train.py, constant size"), ("vz", "visionzoo fast_resnet18, progressive"),
                    ("vzc", "visionzoo fast_resnet18, constant size")):
    rows = curves[tool]
    ax.plot([s for _, s, _ in rows], [t for _, _, t in rows], marker="o", ms=3, label=label)
ax.axhline(target, color="grey", ls=":", lw=1, label=f"timm's final top-1 ({target:.2f})")
ax.set_xlabel("seconds since launch"); ax.set_ylabel("validation top-1 (%)")
ax.set_ylim(max(0, min(t for r in curves.values() for _, _, t in r[2:]) - 5), 100)
ax.grid(alpha=0.3); ax.legend(loc="lower right")
fig.tight_layout(); fig.savefig(out / "curves.png", dpi=120)
print(json.dumps(result, indent=1))
PY
