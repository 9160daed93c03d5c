"""The vision_classification seed's eleven torchvision models, under torchvision's own names.

torchvision definitions keep torchvision state-dict keys, so its published weights and any
torchvision checkpoint load unchanged.
"""

from __future__ import annotations

from dataclasses import replace

import torchvision
from torch import nn

from .registry import ModelCfg, register_model

_RESNET = ModelCfg(classifier="fc")
_VGG = ModelCfg(classifier="classifier.6")

# name -> (registry config, extra torchvision constructor arguments)
SEED_MODELS: dict[str, tuple[ModelCfg, dict]] = {
    "resnet18": (replace(_RESNET, final_norm="layer4.1.bn2"), {}),
    "resnet50": (replace(_RESNET, final_norm="layer4.2.bn3"), {}),
    "resnet101": (replace(_RESNET, final_norm="layer4.2.bn3"), {}),
    "vgg16": (_VGG, {}),
    "vgg19": (_VGG, {}),
    "vgg16_bn": (_VGG, {}),
    "mobilenet_v2": (ModelCfg(classifier="classifier.1"), {}),
    "alexnet": (ModelCfg(classifier="classifier.6"), {}),
    # The auxiliary heads are off: the seed trains and evaluates the main head only. torchvision's
    # published state dict still holds aux1./aux2. keys, which the loader drops by name.
    # transform_input is always on: torchvision turns it on for its weights, and it is not in the
    # state dict, so a checkpoint must rebuild with the same setting however it was trained.
    "googlenet": (ModelCfg(classifier="fc", drop_keys=("aux1.", "aux2.")),
                  {"aux_logits": False, "transform_input": True}),
    "shufflenet_v2_x0_5": (_RESNET, {}),
    "shufflenet_v2_x1_0": (_RESNET, {}),
}


def _builder(name: str, extra: dict):
    def build(num_classes: int = 1000, pretrained: bool = False, **options: float) -> nn.Module:
        # dropout: torchvision's argument of the models that have one (vgg, alexnet, mobilenet_v2, googlenet)
        kwargs = {**extra, **options}
        if name == "googlenet" and not pretrained:
            kwargs["init_weights"] = True  # torchvision warns unless told; its default is this init
        weights = "DEFAULT" if pretrained else None
        return torchvision.models.get_model(name, weights=weights, num_classes=num_classes, **kwargs)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"torchvision {name}"
    return build


for _name, (_cfg, _extra) in SEED_MODELS.items():
    register_model(_cfg)(_builder(_name, _extra))
