"""The vision_classification seed's eleven torchvision models, under torchvision's own names.

torchvision definitions keep torchvision state-dict keys, so its published weights and any
torchvision checkpoint load unchanged.
"""

from __future__ import annotations

import torchvision
from torch import nn

from .registry import ModelCfg, register_model


def _tv(name: str, num_classes: int, pretrained: bool, **kwargs) -> nn.Module:
    weights = "DEFAULT" if pretrained else None
    return torchvision.models.get_model(name, weights=weights, num_classes=num_classes, **kwargs)


_RESNET = ModelCfg(classifier="fc")
_VGG = ModelCfg(classifier="classifier.6")


@register_model(_RESNET)
def resnet18(num_classes: int = 1000, pretrained: bool = False) -> nn.Module:
    return _tv("resnet18", num_classes, pretrained)


@register_model(_RESNET)
def resnet50(num_classes: int = 1000, pretrained: bool = False) -> nn.Module:
    return _tv("resnet50", num_classes, pretrained)


@register_model(_RESNET)
def resnet101(num_classes: int = 1000, pretrained: bool = False) -> nn.Module:
    return _tv("resnet101", num_classes, pretrained)


@register_model(_VGG)
def vgg16(num_classes: int = 1000, pretrained: bool = False) -> nn.Module:
    return _tv("vgg16", num_classes, pretrained)


@register_model(_VGG)
def vgg19(num_classes: int = 1000, pretrained: bool = False) -> nn.Module:
    return _tv("vgg19", num_classes, pretrained)


@register_model(_VGG)
def vgg16_bn(num_classes: int = 1000, pretrained: bool = False) -> nn.Module:
    return _tv("vgg16_bn", num_classes, pretrained)


@register_model(ModelCfg(classifier="classifier.1"))
def mobilenet_v2(num_classes: int = 1000, pretrained: bool = False) -> nn.Module:
    return _tv("mobilenet_v2", num_classes, pretrained)


@register_model(ModelCfg(classifier="classifier.6"))
def alexnet(num_classes: int = 1000, pretrained: bool = False) -> nn.Module:
    return _tv("alexnet", num_classes, pretrained)


# The auxiliary heads are off: the seed trains and evaluates the main head only. torchvision's
# published state dict still holds aux1./aux2. keys, which the loader drops by name.
@register_model(ModelCfg(classifier="fc", drop_keys=("aux1.", "aux2.")))
def googlenet(num_classes: int = 1000, pretrained: bool = False) -> nn.Module:
    if pretrained:
        return _tv("googlenet", num_classes, pretrained, aux_logits=False)
    return _tv("googlenet", num_classes, pretrained, aux_logits=False, init_weights=True)


@register_model(_RESNET)
def shufflenet_v2_x0_5(num_classes: int = 1000, pretrained: bool = False) -> nn.Module:
    return _tv("shufflenet_v2_x0_5", num_classes, pretrained)


@register_model(_RESNET)
def shufflenet_v2_x1_0(num_classes: int = 1000, pretrained: bool = False) -> nn.Module:
    return _tv("shufflenet_v2_x1_0", num_classes, pretrained)
