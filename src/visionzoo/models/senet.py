"""SE-ResNeXt50_32x4d with Cadene's (pretrained-models.pytorch) layout.

timm's `legacy_seresnext50_32x4d` is that definition with the same parameter names
(`layer0.conv1`, `layerN.i.se_module.fc1`, `last_linear`), so Cadene's
`se_resnext50_32x4d-a260b3a4.pth` loads key for key. It pools adaptively, so unlike Cadene's
fixed AvgPool2d(7) it runs at any input size.
"""

from __future__ import annotations

from typing import Any

import timm
from torch import nn

from .registry import ModelCfg, register_model


@register_model(ModelCfg(classifier="last_linear", interpolation="bilinear", final_norm="layer4.2.bn3"))
def se_resnext50_32x4d(num_classes: int = 1000, pretrained: bool = False, **options: float) -> nn.Module:
    timm_names = {"dropout": "drop_rate", "drop_path": "drop_path_rate"}
    kwargs: dict[str, Any] = {timm_names[k]: v for k, v in options.items()}
    return timm.create_model("legacy_seresnext50_32x4d", pretrained=pretrained, num_classes=num_classes, **kwargs)
