"""visionzoo export: write a checkpoint as TorchScript, torch.export (.pt2), ONNX or safetensors, or as a
Hugging Face hub folder (config.json, model.safetensors) that timm loads as local-dir:FOLDER, and with
--push-to-hub ORG/NAME uploads to the hub (then `--model hf-hub:ORG/NAME` loads it anywhere).

The file takes a normalised float NCHW batch and returns logits; class names and preprocessing
travel inside it, so eval/predict/bench/infer accept it in place of the checkpoint. Every export
is run on a real batch (the checkpoint's validation data, or --data) and compared with the eager
model; beyond --atol + --rtol * max|logit| it fails and writes nothing. --tta flip builds flip test-time
augmentation into an onnx, torchscript or export file: it returns (m(x) + m(flip(x))) / 2, the logits
`eval --tta flip` averages, and says so in its metadata (eval and predict then refuse --tta on it).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..inference.defaults import DEFAULT_ATOL, DEFAULT_OPSET, DEFAULT_RTOL, EXPORT_BATCH_SIZE, EXPORT_FORMATS
from .options import add_config_flags, add_model_source_flags, add_tta_flag, count_arg, data_config, model_source


def add_parser(sub) -> None:
    p = sub.add_parser("export", description=__doc__)
    add_model_source_flags(p, file_help="visionzoo checkpoint (.pth) or .safetensors to export")
    p.add_argument("--format", required=True, choices=list(EXPORT_FORMATS))
    p.add_argument("--output", required=True, metavar="PATH", help="the file to write; a folder for --format hub")
    p.add_argument("--dynamic-batch", action="store_true", help="any batch size (else fixed at --batch-size)")
    p.add_argument("--batch-size", type=count_arg, default=EXPORT_BATCH_SIZE,
                   help="the fixed batch size without --dynamic-batch")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset")
    add_tta_flag(p, "build flip test-time augmentation into the file (onnx, torchscript, export): logits = "
                    "(m(x) + m(x flipped left-right)) / 2, recorded in its metadata", choices=("flip",))
    p.add_argument("--atol", type=float, default=DEFAULT_ATOL)
    p.add_argument("--rtol", type=float, default=DEFAULT_RTOL)
    p.add_argument("--push-to-hub", metavar="REPO", help="with --format hub: upload the checked folder to the "
                   "Hugging Face model repo REPO (ORG/NAME or NAME; created if missing); needs a login "
                   "(hf auth login, or HF_TOKEN)")
    p.add_argument("--private", action="store_true", help="with --push-to-hub: create the repo private")
    p.add_argument("--commit-message", metavar="TEXT", help="with --push-to-hub: the upload's commit message")
    add_config_flags(p, only={"data", "val_list", "val_root", "val_split", "img_size"})
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..core.errors import ConfigError

    if args.push_to_hub is None:
        given = [f for f, v in (("--private", args.private), ("--commit-message", args.commit_message)) if v]
        if given:
            raise ConfigError(f"{given[0]} needs --push-to-hub REPO")
    elif args.format != "hub":
        raise ConfigError(f"--push-to-hub uploads a hub folder: it needs --format hub, not --format {args.format}")

    from ..inference.export import export_model
    from ..inference.hub import hub_client, push_hub

    # the package, the repo id and the login are checked before the export, which can take a while
    api = hub_client(args.push_to_hub) if args.push_to_hub is not None else None
    data = data_config(args)
    img_size = data.img_size if data else None
    if data is not None and not (data.data or data.val_list or data.val_root or data.val_split):
        data = None  # only --img-size was given: check on the checkpoint's own data (--val-split: its split)
    r = export_model(model_source(args), args.format, args.output, img_size, args.dynamic_batch, args.opset,
                     args.batch_size, data, args.atol, args.rtol, args.raw_weights, args.tta)
    c = r["check"]
    tta = f", {r['tta']} TTA built in" if r["tta"] else ""
    print(f"wrote {r['output']} ({r['bytes'] / 2**20:.1f} MiB, {r['format']}, {r['img_size']} px, "
          f"batch {'dynamic' if r['dynamic_batch'] else args.batch_size}{tta})\n"
          f"check vs eager on {c['batch_size']} {c['input']} images: max |diff| {c['max_abs_diff']:.2e} "
          f"(limit {c['limit']:.2e}), top-1 agreement {100 * c['top1_agreement']:.1f}%", flush=True)
    if api is not None:
        url, repo_id = push_hub(api, Path(r["output"]), args.push_to_hub, args.private, args.commit_message)
        print(f"pushed {r['output']} to {url} (load it with --model hf-hub:{repo_id})")
    return 0
