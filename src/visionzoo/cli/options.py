"""Command-line flags generated from the config dataclasses: every field is a flag."""

from __future__ import annotations

import argparse
import contextlib
import typing
from collections.abc import Callable, Iterator
from typing import Any

from ..config import (
    CHOICES,
    KEYWORDS,
    SECTIONS,
    TrainConfig,
    apply_overrides,
    check_data,
    coerce,
    field_help,
    field_index,
    field_type,
    getattr_path,
    layer_config,
    to_dict,
)
from ..config.limits import cap_workers, check_count, check_seed, check_size
from ..core.errors import ConfigError, VisionZooError
from ..core.precision import AUTO, PRECISIONS, parse_precision

# --train-size / --test-size: the FixRes seed's words for the size a run trains (and evaluates) at
# --amp: the training flag's name before one precision vocabulary served training and inference
ALIASES = {"batch_size": ["-b"], "workers": ["-j"], "epochs": ["-e"], "weights": ["--init-from"],
           "img_size": ["--train-size", "--test-size"], "precision": ["--amp"]}
SKIP = {"recipe", "mode"}  # handled by the command itself

# other tools' spellings (timm's train.py, torchvision's reference scripts, common habits) -> ours: a misspelt
# flag that is one of these gets ours as its first suggestion, where difflib alone finds nothing close
FLAG_SYNONYMS = {
    "learning-rate": "--lr", "base-lr": "--lr-base", "wd": "--weight-decay", "optimizer": "--opt",
    "opt-eps": "--eps", "opt-betas": "--betas", "lr-step-size": "--step-size", "decay-epochs": "--step-size",
    "lr-gamma": "--gamma", "decay-rate": "--gamma", "lr-warmup-epochs": "--warmup-epochs",
    "scheduler": "--sched", "lr-scheduler": "--sched", "smoothing": "--label-smoothing",
    "drop": "--dropout", "drop-rate": "--dropout", "drop-path-rate": "--drop-path", "aa": "--auto-augment",
    "autoaugment": "--auto-augment", "reprob": "--random-erase", "random-erasing": "--random-erase",
    "mixup-alpha": "--mixup", "cutmix-alpha": "--cutmix", "model-ema": "--ema", "model-ema-decay": "--ema-decay",
    "initial-checkpoint": "--init-from", "grad-accum-steps": "--accum-steps",
    "gradient-accumulation-steps": "--accum-steps", "torchcompile": "--compile", "clip-grad-norm": "--clip-grad",
    "max-grad-norm": "--clip-grad", "input-size": "--img-size", "image-size": "--img-size",
    "train-crop-size": "--img-size", "val-crop-size": "--eval-img-size", "ra-reps": "--aug-repeats",
    "data-dir": "--data", "data-path": "--data", "data-root": "--data", "dataset": "--data",
    "output-dir": "--output", "out-dir": "--output", "num-workers": "--workers", "bs": "--batch-size",
    "nb-classes": "--num-classes", "n-classes": "--num-classes", "arch": "--model", "model-name": "--model",
    "use-deterministic-algorithms": "--deterministic", "ckpt": "--checkpoint", "model-path": "--checkpoint",
    "top-k": "--topk",
}


def flag_synonyms(flag: str, known: list[str]) -> list[str]:
    """Ours for another tool's spelling of a flag (--learning-rate -> --lr), where this command has it."""
    ours = FLAG_SYNONYMS.get(flag.lstrip("-").lower().replace("_", "-"))
    return [ours] if ours in known else []


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _remember(namespace: argparse.Namespace, dest: str, option_string: str | None) -> None:
    typed = dict(getattr(namespace, "cfg_flags", {}))
    typed[dest] = option_string
    namespace.cfg_flags = typed


class _StoreNamed(argparse.Action):
    """Store the value and remember which spelling was typed (--amp or --precision), so an error about
    the value names the flag the user wrote."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        _remember(namespace, self.dest, option_string)


class _Switch(argparse.Action):
    """A boolean field's two flags: --x / --no-x, and for a field named no_x (no_decay_norm_bias) --no-x (true)
    and --x (false), where argparse's BooleanOptionalAction would offer --no-no-x."""

    def __init__(self, option_strings: list[str], dest: str, true_flag: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, **kwargs)
        self.true_flag = true_flag

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, option_string == self.true_flag)


def shown(value: Any) -> str:
    """A default as its flag would take it: none, on/off, comma lists, short floats."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ",".join(shown(v) for v in value)
    return str(value)


def show_defaults(parser: argparse.ArgumentParser) -> None:
    """Append `[default: X]` to every flag's help that does not say its default yet, as the config flags do
    (config_flag_help): every command's --help then shows its defaults the same way. A flag without a default
    (None) or one that switches something off (--no-progress) says nothing."""
    for action in parser._actions:
        default = action.default
        if (not action.option_strings or action.help == argparse.SUPPRESS or default is None
                or default is argparse.SUPPRESS or isinstance(action, argparse._StoreFalseAction)
                or "[default: " in (action.help or "")):
            continue
        action.help = f"{action.help or ''} [default: {shown(default)}]".lstrip().replace("%", "%%")


def _metavar(name: str, tp: Any) -> str:
    if name in KEYWORDS:  # a number or its keywords: N|auto
        return "|".join(("N", *KEYWORDS[name]))
    if name == "img_size_schedule":
        return "START:END|SIZE@EPOCH,..."
    if typing.get_origin(tp) is list:
        return "N,N,..." if typing.get_args(tp)[0] is int else "X,X"
    return {int: "N", float: "X"}.get(tp, name.upper())


def config_flag_help(path: str, default: Any) -> str:
    """The field's help line (config/schema.py, the one source) and its default, escaped for argparse."""
    return f"{field_help(path)} [default: {shown(default)}]".replace("%", "%%")


def add_config_flags(parser: argparse.ArgumentParser, only: set[str] | None = None) -> None:
    """Add one flag per config field (or per field in `only`), grouped by section, each with its help and
    default from the schema; unset flags stay out of args."""
    defaults = TrainConfig()
    groups: dict[str, argparse._ArgumentGroup] = {}
    for name, path in field_index().items():
        if name in SKIP or (only is not None and name not in only):
            continue
        section = path.split(".")[0] if "." in path else "run"
        if section not in groups:
            about = type(getattr(defaults, section)).__doc__ if section in SECTIONS else "The run's own settings."
            groups[section] = parser.add_argument_group(f"{section} options", (about or "").split("\n")[0])
        tp = field_type(path)
        base = typing.get_args(tp)[0] if type(None) in typing.get_args(tp) else tp
        kwargs: dict[str, Any] = {"dest": f"cfg__{name}", "default": argparse.SUPPRESS,
                                  "help": config_flag_help(path, getattr_path(defaults, path))}
        if base is bool:
            # a field named no_x is switched on by --no-x; its opposite is --x (not --no-no-x)
            flags = [_flag(name), "--" + name[3:].replace("_", "-")] if name.startswith("no_") else \
                [_flag(name), "--no-" + name.replace("_", "-")]
            groups[section].add_argument(*flags, action=_Switch, true_flag=flags[0], **kwargs)
            continue
        kwargs["metavar"] = "|".join(CHOICES[name]) if name in CHOICES else _metavar(name, base)
        groups[section].add_argument(_flag(name), *ALIASES.get(name, []), action=_StoreNamed, **kwargs)


def cli_overrides(args: argparse.Namespace) -> dict[str, Any]:
    index = field_index()
    typed = getattr(args, "cfg_flags", {})
    out: dict[str, Any] = {}
    for key, value in vars(args).items():
        if key.startswith("cfg__"):
            name = key[5:]
            flag = typed.get(key) or ""  # a long spelling as typed (--amp), a short one (-e) by its full name
            flag = flag if flag.startswith("--") else _flag(name)
            out[index[name]] = coerce(value, field_type(index[name]), flag)  # errors name the flag
            if name in FIELD_LIMITS and out[index[name]] is not None:  # the flag and the key, as other errors say
                out[index[name]] = FIELD_LIMITS[name](out[index[name]], f"{flag} ({index[name]})")
    return out


# the config flags every command checks the one way (config.limits): sizes, counts, workers (capped), the seed
FIELD_LIMITS: dict[str, Callable[[Any, str], Any]] = {
    "img_size": check_size, "batch_size": check_count, "workers": cap_workers,
    "eval_img_size": lambda v, flag: v if isinstance(v, str) else check_size(v, flag),  # or auto
    "seed": check_seed,
}


def limited(check: Callable[[Any, str], Any]) -> Callable[[str], Any]:
    """argparse type for a command's own flag (predict --img-size, --batch-size): an integer through the
    same check as the config flags; argparse names the flag in its one-line error."""

    def parse(text: str) -> Any:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        try:
            return check(value, "")
        except ConfigError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    parse.__name__ = "int"  # argparse's own messages say "invalid int value"
    return parse


size_arg, count_arg, workers_arg = limited(check_size), limited(check_count), limited(cap_workers)


def nest(flat: dict[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for path, value in flat.items():
        if "." in path:
            section, key = path.split(".", 1)
            nested.setdefault(section, {})[key] = value
        else:
            nested[path] = value
    return nested


def resolve_config(args: argparse.Namespace) -> TrainConfig:
    """defaults < recipe < recipe mode < --config YAML < flags (config.layer_config, as visionzoo.train layers)."""
    return layer_config(getattr(args, "recipe", None) or None, getattr(args, "mode", None) or None,
                        getattr(args, "config", None) or None, nest(cli_overrides(args)), "command line")


# the data flags that commands reading a validation split (eval, export, quantize, preprocess) offer
DATA_FLAGS = {"data", "val_list", "val_root", "train_list", "train_root", "dummy", "img_size", "crop_pct",
              "interpolation", "workers", "skip_bad_images", "decode", "val_split"}


def flags_config(args: argparse.Namespace) -> TrainConfig:
    """A TrainConfig from the config flags given (defaults elsewhere), its data settings checked."""
    cfg = apply_overrides(TrainConfig(), nest(cli_overrides(args)), "command line")
    check_data(cfg.data)
    return cfg


def data_config(args: argparse.Namespace):
    """A DataConfig from the data flags given, or None when none were (use the model's own data)."""
    return flags_config(args).data if cli_overrides(args) else None


def run_training(fn, cfg: TrainConfig, print_config: bool = False) -> dict[str, Any] | None:
    """--print-config prints cfg and returns None; otherwise fn(cfg), leaving the process group cleaned up."""
    if print_config:
        import sys

        import yaml

        yaml.safe_dump(to_dict(cfg), sys.stdout, sort_keys=False)
        return None
    from ..core.distributed import cleanup

    try:
        return fn(cfg)
    finally:
        cleanup()


@contextlib.contextmanager
def output_flag(flag: str) -> Iterator[None]:
    """An output file that cannot be written (read-only, a missing folder) is one line naming the flag too."""
    try:
        yield
    except VisionZooError as e:
        raise type(e)(f"{flag}: {e}") from None


def precision_word(text: str) -> str:
    """argparse type for --precision: the one vocabulary (core.precision), aliases included."""
    try:
        return parse_precision(text, what="--precision")
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--precision: ")) from None


def add_model_runtime_flags(p: argparse.ArgumentParser, precision: bool = True, batch_size: bool = True) -> None:
    """--device / --precision / --batch-size shared by the commands that run a model file."""
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    if precision:
        p.add_argument("--precision", "--amp", dest="precision", default="fp32", type=precision_word,
                       metavar="|".join((AUTO, *PRECISIONS)),
                       help="fp16/bf16 run under autocast (checkpoints and .pt2 files); int8 for quantised files; "
                            "auto: bf16/fp16 on CUDA, fp32 on CPUs")
    if batch_size:
        p.add_argument("--batch-size", "-b", type=count_arg, default=64)


# what --tta does, said once for eval and predict (train's flag is generated from the config field)
TTA_HELP = ("test-time augmentation, logits averaged over views of the evaluated image: flip = the image and its "
            "horizontal flip (2 views); flip+crops = those plus the 4 corner crops of 7/8 its side, each resized back "
            "and flipped (10 views)")


def add_tta_flag(p: argparse.ArgumentParser, text: str = TTA_HELP, choices: tuple[str, ...] = CHOICES["tta"]) -> None:
    """--tta MODE: argparse refuses an unknown mode in one line naming the flag and the choices."""
    p.add_argument("--tta", choices=list(choices), metavar="|".join(choices), help=text)


def add_model_source_flags(p: argparse.ArgumentParser, several: bool = False, file_help: str | None = None) -> None:
    """--checkpoint FILE (a visionzoo file), or --model NAME with --weights FILE / --pretrained: a model as users
    have it (a bare state dict, a torchvision or timm checkpoint, safetensors)."""
    g = p.add_argument_group("model: a visionzoo file, or a model name with weights from anywhere")
    g.add_argument("--checkpoint", "--model-file", dest="checkpoint", action="append" if several else "store",
                   metavar="FILE", help=file_help or "visionzoo checkpoint (.pth) or exported file (.onnx, .pt2, .ts, "
                                                     ".safetensors)")
    g.add_argument("--model", metavar="NAME", help="registered or timm model name, with --weights or --pretrained; "
                                                   "or local-dir:DIR / hf-hub:ORG/NAME (a timm hub folder or repo)")
    g.add_argument("--weights", metavar="FILE", help="bare state dict, torchvision/timm/pytorch checkpoint or "
                                                      ".safetensors, for --model (DDP/compile prefixes stripped)")
    g.add_argument("--pretrained", action="store_true", help="--model with the library's hub weights (internet)")
    g.add_argument("--classes", metavar="FILE", help="class names, one per line, for --model [default: ImageNet-1k's "
                                                      "for a 1000-class head, else numbers]")
    g.add_argument("--num-classes", type=int, metavar="N", help="head size for --model [default: from --weights]")
    g.add_argument("--raw-weights", action="store_true",
                   help="a checkpoint with EMA weights: use its raw (trained) weights, not the average")


def model_source(args: argparse.Namespace, random_weights: bool = False):
    """The model the flags of add_model_source_flags name: a file path (or list, with several) or a ModelSpec."""
    from ..inference.model_spec import spec_or_none

    spec = spec_or_none(args.model, args.weights, args.pretrained, args.classes, args.num_classes,
                        bool(args.checkpoint), random_weights)
    return spec if spec is not None else args.checkpoint
