"""What mixup/cutmix on the device adds to a training step: resnet18 steps through visionzoo's own step
(`engine.step.optimizer_step`), without and with `BatchMix` (mixup 0.2, cutmix 1.0, switch 0.5, as the
modern recipes), in alternating blocks so drift hits both alike; also the mixing alone (images and soft
targets, the device synchronised). Prints one JSON object.
python tools/bench_mixup.py [--device cpu|cuda] [--img-size 224] [--batch-size 64] [--steps 5] [--reps 6]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from visionzoo.config import AugConfig
from visionzoo.data.loader import DeviceNormalizer
from visionzoo.engine.mixing import BatchMix
from visionzoo.engine.objective import Criterion
from visionzoo.engine.step import StepState, optimizer_step, sync
from visionzoo.models import create_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5, help="steps per timed block")
    ap.add_argument("--reps", type=int, default=6, help="blocks of each kind")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    args = ap.parse_args()
    dev = torch.device(args.device)
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=1000).to(dev).train()
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    state = StepState(optimizer=torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9),
                      scheduler=None,  # type: ignore[arg-type]  # the step does not touch it
                      scaler=torch.amp.GradScaler(dev.type, enabled=False),
                      normalizer=DeviceNormalizer((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), dev),
                      precision=args.precision, clip_grad=None, criterion=Criterion(label_smoothing=0.1))
    mix = BatchMix(AugConfig(mixup=0.2, cutmix=1.0), 1000)
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=dev)
    if dev.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (args.batch_size,), device=dev)

    def block(with_mix: bool) -> float:
        state.mix = mix if with_mix else None
        sync(dev)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            optimizer_step(model, state, x, y)
        sync(dev)
        return (time.perf_counter() - t0) / args.steps

    block(False), block(True)  # warm-up: kernels, allocator, the optimizer's state
    plain, mixed = [], []
    for _ in range(args.reps):
        plain.append(block(False))
        mixed.append(block(True))
    alone = []
    for _ in range(args.reps * args.steps):
        sync(dev)
        t0 = time.perf_counter()
        mix(x, y, 0)
        sync(dev)
        alone.append(time.perf_counter() - t0)
    step_plain, step_mixed, mix_alone = (statistics.median(v) for v in (plain, mixed, alone))
    print(json.dumps({
        "device": str(dev), "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(), "img_size": args.img_size, "batch_size": args.batch_size,
        "precision": args.precision, "step_plain_ms": round(step_plain * 1e3, 2),
        "step_mixed_ms": round(step_mixed * 1e3, 2), "mix_alone_ms": round(mix_alone * 1e3, 3),
        "mix_share_of_step_pct": round(100 * mix_alone / step_plain, 3),
        "step_difference_pct": round(100 * (step_mixed - step_plain) / step_plain, 2),
        "blocks_plain_ms": [round(v * 1e3, 1) for v in plain], "blocks_mixed_ms": [round(v * 1e3, 1) for v in mixed],
    }))


if __name__ == "__main__":
    main()
