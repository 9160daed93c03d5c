"""visionzoo demo: the built-in end-to-end job, no download.

Trains resnet18 on the handwritten digits that ship with scikit-learn (recipe `demo`),
evaluates the best checkpoint and says where everything is.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
from collections.abc import Iterator

from ..core.files import write_json

PLOTS_HINT = "pip install 'visionzoo[plots]'"  # what training's curves.png note ends with, and the demo's


class _HeldNotes(logging.Filter):
    """Keeps training's note that curves.png needs matplotlib out of the log, where it lands between the epoch
    lines of the base install's demo; the demo says it once, at the end."""

    def __init__(self) -> None:
        super().__init__()
        self.plots_missing = False

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith("curves.png") and PLOTS_HINT in record.getMessage():
            self.plots_missing = True
            return False
        return True


@contextlib.contextmanager
def _held_notes() -> Iterator[_HeldNotes]:
    held = _HeldNotes()
    logger = logging.getLogger("visionzoo")  # training logs there (engine.runlog)
    logger.addFilter(held)
    try:
        yield held
    finally:
        logger.removeFilter(held)


def add_parser(sub) -> None:
    p = sub.add_parser("demo", description=__doc__)
    p.add_argument("--output", help="run folder (default: runs/demo-<date>-<time>)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--model", help="another model, e.g. mobilenet_v2")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import time

    from ..config import DataConfig, apply_overrides
    from ..config.recipes import get_recipe
    from ..engine.trainer import train
    from ..inference.evaluate import evaluate

    output = args.output or f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}"
    overrides: dict = {"output": output, "device": args.device, "data": {"data": "builtin:digits"}}
    if args.epochs:
        overrides["epochs"] = args.epochs
    if args.model:
        overrides["model"] = {"model": args.model}
    cfg = apply_overrides(get_recipe("demo").resolve(), overrides, "demo")
    with _held_notes() as held:
        summary = train(cfg)
    result = evaluate(summary["checkpoint"], DataConfig(data="builtin:digits", workers=cfg.data.workers),
                      batch_size=256, device=args.device, progress=False)
    out = f"{summary['output']}/eval_best.json"
    write_json(out, result)
    chance = 100.0 / len(result["per_class"])
    print(f"\nvisionzoo demo: {cfg.model.model} on built-in digits ({result['num_images']} val images)\n"
          f"  val top-1 {result['top1']:.2f}% (chance {chance:.0f}%), top-5 {result['top5']:.2f}%\n"
          f"  checkpoint   {summary['checkpoint']}\n"
          f"  metrics      {summary['output']}/metrics.jsonl\n"
          f"  evaluation   {out}\n"
          f"  config       {summary['output']}/config.yaml\n"
          f"  next: visionzoo eval --checkpoint {summary['checkpoint']} --data builtin:digits")
    if held.plots_missing:
        print(f"  curves.png (loss, top-1, lr per epoch) was not drawn: {PLOTS_HINT} draws it")
    return 0
