"""Models as users have them: a registered or timm name with a weights file of any layout (a bare state
dict, a torchvision, timm or pytorch/examples checkpoint, safetensors), or with the library's hub weights.

`predict`, `eval`, `export`, `quantize` and `bench` take one (`--model NAME --weights FILE`, `--pretrained`)
wherever they take a visionzoo file. The head size comes from the weights; class names from `--classes
FILE`, or ImageNet-1k's (as timm ships them, offline) for a 1000-way head.

timm's hub names need no weights flag: `--model local-dir:DIR` (a folder `visionzoo export --format hub`
writes) and `--model hf-hub:ORG/NAME` (the network) carry weights, preprocessing and class names
(config.json's `label_names`), all read by timm.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ..core.errors import ConfigError, DataError
from ..models import (
    create_model,
    get_model_cfg,
    is_hub_name,
    load_state_dict_file,
    load_weights,
    model_cfg_of,
    model_name_of,
)
from ..models.weights import head_size
from .model_info import ModelInfo

IMAGENET_CLASSES = 1000


@dataclass(frozen=True)
class ModelSpec:
    """A model named by the user, with its weights from a file or the hub (not a visionzoo file)."""

    name: str
    weights: str | None = None
    pretrained: bool = False
    classes: str | None = None  # a text file of class names, one per line, in label order
    num_classes: int | None = None  # the head's size; default: the weights' classifier, else the model's

    @property
    def label(self) -> str:
        """How results and messages name the model."""
        if self.weights:
            return str(self.weights)
        if is_hub_name(self.name):  # the name says where the weights are
            return self.name
        return f"{self.name} ({'pretrained' if self.pretrained else 'random'} weights)"


def source_label(source: object) -> str:
    """How results name a model source: a ModelSpec's label, or the file path."""
    return source.label if isinstance(source, ModelSpec) else str(source)


def module_from_spec(spec: ModelSpec) -> tuple[nn.Module, ModelInfo]:
    """The model in eval mode with its weights, and its ModelInfo (the model's preprocessing, class names)."""
    num_classes = spec.num_classes
    if spec.weights and num_classes is None:
        num_classes = head_size(load_state_dict_file(spec.weights), get_model_cfg(spec.name).classifier)
    model = create_model(spec.name, num_classes=num_classes, pretrained=spec.pretrained)
    if spec.weights:
        load_weights(model, spec.weights, keep_head=True)
    cfg = model_cfg_of(model)
    # the name that rebuilds it: a hub folder's architecture, not its path (exports record it; spec.label still
    # says where the weights came from)
    info = ModelInfo.from_model_cfg(cfg, model_name_of(model))
    info.classes = class_names(spec, cfg.num_classes, cfg.label_names)
    info.extra["weights"] = spec.label
    return model.eval(), info


def class_names(spec: ModelSpec, num_classes: int, label_names: tuple[str, ...] | None = None) -> list[str] | None:
    """--classes FILE, else the model's own label_names (a hub config's), else ImageNet-1k's names for a
    1000-way head, else None (class numbers)."""
    if spec.classes:
        path = Path(spec.classes)
        if not path.is_file():
            raise DataError(f"class names file not found: {path}")
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if len(names) != num_classes:
            raise DataError(f"{path}: {len(names)} class names for a {num_classes}-class model")
        return names
    if label_names and len(label_names) == num_classes:
        # timm's own ImageNet models list synset ids (n01440764): the readable names say more
        if num_classes == IMAGENET_CLASSES and list(label_names) == imagenet_synsets():
            return imagenet_classes()
        return list(label_names)
    return imagenet_classes() if num_classes == IMAGENET_CLASSES else None


def imagenet_synsets() -> list[str]:
    """ImageNet-1k's WordNet ids in label order (timm's offline copy)."""
    from timm.data import ImageNetInfo

    return list(ImageNetInfo().label_names())


# the ImageNet-1k classes whose first WordNet lemma another class shares, named by what they are (their synset's
# gloss): "crane" is a bird (134) and a machine (517); "maillot" (638) is also the first word of 639, the tank
# suit. Documented in docs/inference.md.
IMAGENET_SHARED_NAMES = {"n02012849": "crane (bird)", "n03126707": "crane (machine)",
                         "n03710721": "maillot (tank suit)"}


def imagenet_classes() -> list[str]:
    """ImageNet-1k's class names in label order, from timm's offline copy: each class's first WordNet lemma,
    unique: the classes that share one are named as IMAGENET_SHARED_NAMES says (any other, by its synset id)."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    synsets = [info.index_to_label_name(i) for i in range(IMAGENET_CLASSES)]
    names = [IMAGENET_SHARED_NAMES.get(synset) or info.index_to_description(i).split(",")[0].strip()
             for i, synset in enumerate(synsets)]
    shared = {n for n in names if names.count(n) > 1}  # none with timm's list: a later list keeps them apart too
    return [f"{n} ({synsets[i]})" if n in shared else n for i, n in enumerate(names)]


def spec_or_none(name: str | None, weights: str | None, pretrained: bool, classes: str | None,
                 num_classes: int | None, file_given: bool, random_weights: bool = False) -> ModelSpec | None:
    """The command line's model: a ModelSpec for --model, None for a visionzoo file (--checkpoint).
    random_weights: --model alone is allowed (bench, as timm's benchmark.py); elsewhere it needs weights."""
    named = [flag for flag, on in (("--weights", weights), ("--pretrained", pretrained), ("--classes", classes),
                                   ("--num-classes", num_classes)) if on]
    if name is None:
        if named:
            raise ConfigError(f"{named[0]} goes with --model NAME (a visionzoo --checkpoint carries its own)")
        if not file_given:
            raise ConfigError("give a model: --checkpoint FILE (a visionzoo file), or --model NAME with --weights "
                              "FILE or --pretrained")
        return None
    if file_given:
        raise ConfigError("--checkpoint and --model name two models: give one")
    if is_hub_name(name):
        if weights:
            raise ConfigError(f"--weights: --model {name} carries its own weights (config.json and model.safetensors)")
        # the hub names are timm's pretrained models: their weights come with the name
        return ModelSpec(name, None, True, classes, num_classes)
    if weights and pretrained:
        raise ConfigError("--weights and --pretrained both give the weights: give one")
    if not (weights or pretrained or random_weights):
        raise ConfigError(f"--model {name} needs its weights: --weights FILE or --pretrained")
    return ModelSpec(name, weights, pretrained, classes, num_classes)
