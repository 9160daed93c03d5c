# Shared by tools/longtail_compare.sh and tools/longtail_torchrun.sh (sourced, with OUT and SEED as $1 $2):
# the long-tailed digits made by make-lt, and the training settings every method uses.
out=${1:-lt-compare}; seed=${2:-0}
root=$(python -c "from visionzoo.data.builtin import materialize; print(materialize('digits'))")
mkdir -p "$out"
[[ -f "$out/lt/train.txt" ]] || visionzoo make-lt --data "$root" --output "$out/lt" --alpha 6 --open-classes 2 --val-per-class 10
common=(--data "$root" --train-list "$out/lt/train.txt" --val-list "$out/lt/val.txt" --img-size 32 --crop-pct 1.0
        --scale 0.5,1.0 --hflip 0 --batch-size 32 --workers 0 --device cpu --no-progress --eval-every 0 --seed "$seed"
        --weight-decay 5e-4)
s1=(--model resnet10 --epochs 12 --lr 0.1 --sched step --step-size 4)
r=$out/s$seed
s2=(--model oltr_resnet10 --epochs 6 --lr 0.01 --head-lr-factor 10 --sched step --step-size 2 --sampler class_aware
    --init-from "$r/stage1/final_model_checkpoint.pth")
ev=(--val-list "$out/lt/test.txt" --longtail --open-list "$out/lt/open.txt" --many 60 --few 20 --no-progress --device cpu)
