"""visionzoo average: average checkpoints into one (timm's avg_checkpoints), or make a greedy soup (Wortsman et
al. 2022: add a checkpoint only if validation top-1 does not drop).

RUN_OR_CKPTS: a run folder (its epoch-N.pth, kept by `train --keep-last K`) and/or checkpoint files. Checkpoints
with EMA weights are averaged by those (the ones inference uses). The inputs and the result are evaluated on
the validation split (the data the checkpoints record, or the data flags); --recompute-bn N re-estimates the
average's BatchNorm statistics from N training batches (read with the evaluation transform). The output is a
checkpoint that eval, predict and export load like any other.
"""

from __future__ import annotations

import argparse

from .options import DATA_FLAGS, add_config_flags, add_model_runtime_flags, count_arg, data_config, output_flag


def add_parser(sub) -> None:
    p = sub.add_parser("average", description=__doc__,
                       usage="visionzoo average RUN_OR_CKPTS... --output FILE [--last K | --best K] [--greedy] "
                             "[--recompute-bn N] [--json FILE] [data flags]")
    p.add_argument("sources", nargs="+", metavar="RUN_OR_CKPTS", help="run folders (their epoch-N.pth) and/or "
                   "checkpoint files")
    p.add_argument("--output", required=True, metavar="FILE", help="the averaged checkpoint to write")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--last", type=count_arg, metavar="K", help="the last K checkpoints (by epoch) [default: all]")
    which.add_argument("--best", type=count_arg, metavar="K",
                       help="the best K by the validation top-1 each checkpoint records [default: all]")
    p.add_argument("--greedy", action="store_true",
                   help="greedy soup: best first, each next one kept only if validation top-1 does not drop")
    p.add_argument("--recompute-bn", type=int, default=0, metavar="N",
                   help="re-estimate BatchNorm statistics of the average from N training batches; 0: keep the "
                        "averaged ones")
    p.add_argument("--json", metavar="FILE", help="write the summary: the inputs with their top-1, which went in, "
                                                  "the result's top-1")
    p.add_argument("--no-eval", dest="evaluate", action="store_false",
                   help="write a uniform average without measuring it (no validation data needed)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    add_model_runtime_flags(p)
    p.set_defaults(batch_size=128)
    add_config_flags(p, only=DATA_FLAGS)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..core.distributed import is_main_process
    from ..core.errors import ConfigError
    from ..core.files import write_json
    from ..inference.average import average, summary_table

    if args.recompute_bn < 0:
        raise ConfigError(f"--recompute-bn {args.recompute_bn}: a number of batches, >= 0")
    summary = average(args.sources, args.output, args.last, args.best, args.greedy, args.recompute_bn,
                      data_config(args), args.batch_size, args.device, args.precision, args.evaluate, args.progress)
    if not is_main_process():  # under torchrun, rank 0 reports for all
        return 0
    print(summary_table(summary))
    print(f"wrote {args.output}")
    if args.json:
        with output_flag("--json"):
            write_json(args.json, summary)
        print(f"wrote {args.json}")
    return 0
