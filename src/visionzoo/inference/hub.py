"""The Hugging Face hub layout timm reads: a folder holding config.json and model.safetensors.

`visionzoo export --format hub` writes one; `timm.create_model("local-dir:DIR", pretrained=True)` (and
visionzoo's `--model local-dir:DIR`) loads it, as does `hf-hub:ORG/NAME` once the folder is uploaded
(`export --push-to-hub ORG/NAME`: hub_client, push_hub).
The weights must be a timm architecture's, under timm's parameter names: a model visionzoo built through
timm is one already; visionzoo's torchvision ResNets have timm twins with the same parameter names.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torch import nn

from ..core.errors import ConfigError, ModelFileError, VisionZooError
from ..core.extras import require
from ..core.files import TEMP_MARK, atomic_path, write_json
from ..models.registry import TIMM_TWINS
from .model_info import ModelInfo

CONFIG, WEIGHTS = "config.json", "model.safetensors"
DEFAULT_COMMIT_MESSAGE = "Upload a visionzoo export (visionzoo export --format hub)"
LOGIN_HINT = "`hf auth login` (`huggingface-cli login` before huggingface_hub 1.0) or HF_TOKEN"
HUB_FILES = (CONFIG, WEIGHTS)
# visionzoo's torchvision ResNets -> timm's: same modules, same parameter names, same forward (the export
# check compares the logits of every file it writes)
TORCHVISION_AS_TIMM = {n: n for n in TIMM_TWINS}
# pretrained_cfg keys describing timm's own weights rather than these: the source, and test-time advice
# visionzoo did not evaluate with
_DROPPED = ("url", "file", "hf_hub_id", "hf_hub_filename", "source", "state_dict", "tag", "test_input_size",
            "test_crop_pct", "test_pool_size", "label_offset", "label_names", "label_descriptions", "paper_ids",
            "notes", "origin_url", "license")


def timm_equivalent(model: nn.Module, name: str) -> nn.Module:
    """model as a timm model with the same weights (model itself where timm built it); a ModelFileError
    naming the architecture where timm has none that takes these weights."""
    import timm
    import torchvision

    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, dict) and timm.is_model(cfg.get("architecture") or ""):
        return model  # built by timm (timm names, se_resnext50_32x4d's legacy_seresnext50_32x4d): as it is
    arch = TORCHVISION_AS_TIMM.get(name)
    # a subclass (OLTR's ResNet) adds modules timm's resnet lacks
    if arch is None or type(model) is not torchvision.models.ResNet:
        raise ModelFileError(
            f"--format hub needs an architecture timm has; found {name} ({type(model).__module__}."
            f"{type(model).__name__}), which timm lacks (timm models, se_resnext50_32x4d and torchvision's "
            f"{'/'.join(TORCHVISION_AS_TIMM)} export)")
    fc = model.fc
    assert isinstance(fc, nn.Linear)
    twin = timm.create_model(arch, num_classes=fc.out_features)
    twin.load_state_dict(model.state_dict())  # strict: every name and shape must match
    return twin.eval()


def hub_config(model: nn.Module, info: ModelInfo) -> dict[str, Any]:
    """config.json for a timm model: the keys timm's save_config_for_hf writes, with visionzoo's preprocessing
    and class names (timm's load_model_config_from_path/_from_hf read them)."""
    pcfg = {k: v for k, v in dict(getattr(model, "pretrained_cfg", {})).items()
            if k not in _DROPPED and (v is not None or k in ("first_conv", "classifier"))}
    size = info.img_size
    if tuple(pcfg.get("input_size", (3, size, size))[1:]) != (size, size):
        pcfg.pop("pool_size", None)  # the source's final feature-map size: another one at this input size
    num_classes = int(getattr(model, "num_classes", info.num_classes))
    pcfg.update(
        input_size=[3, size, size],
        interpolation=info.interpolation,
        crop_pct=info.crop_pct,
        crop_mode="center",  # visionzoo's evaluation: shorter side to size / crop_pct, then the centre square
        mean=list(info.mean),
        std=list(info.std),
        num_classes=num_classes,
        custom_load=False,  # a plain state dict under the model's own names
    )
    config: dict[str, Any] = {"architecture": pcfg.pop("architecture"), "num_classes": num_classes}
    num_features = getattr(model, "num_features", None)
    if isinstance(num_features, int):
        config["num_features"] = num_features
    pool = getattr(model, "global_pool", None)
    pool_type = getattr(pool, "pool_type", pool)  # SelectAdaptivePool2d or the string some models keep
    if isinstance(pool_type, str) and pool_type:
        config["global_pool"] = pool_type
    if info.classes and len(info.classes) == num_classes:
        config["label_names"] = list(info.classes)
    config["pretrained_cfg"] = pcfg
    # timm ignores other top-level keys: where the weights came from, for people reading the file
    config["visionzoo"] = {k: v for k, v in (("model_name", info.model_name),
                                             ("exported_from", info.extra.get("exported_from")),
                                             ("weights", info.extra.get("weights_used"))) if v is not None}
    return config


def write_hub(model: nn.Module, info: ModelInfo, folder: Path) -> None:
    """folder/config.json and folder/model.safetensors for a timm model (see timm_equivalent), each written
    atomically (core.files: the mode a plain open() gives, a full disk as one line)."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(folder / WEIGHTS) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})  # the hub's convention for torch weights
    write_json(folder / CONFIG, hub_config(model, info))


def load_hub(folder: str | Path) -> nn.Module:
    """The model in a hub-layout folder, loaded as timm loads it (`local-dir:`), in eval mode."""
    import timm

    return timm.create_model(f"local-dir:{folder}", pretrained=True).eval()


def hub_bytes(folder: Path) -> int:
    return sum((folder / f).stat().st_size for f in HUB_FILES)


@contextlib.contextmanager
def atomic_folder(dst: Path) -> Iterator[Path]:
    """A temp folder beside dst to write the hub files into; on success it becomes dst (a new folder) or its
    files replace dst's one by one (an existing folder keeps its other files). On error dst is as it was, and a
    write that failed for want of room names dst, not the temp folder."""
    if dst.exists() and not dst.is_dir():
        raise ConfigError(f"--output {dst}: a file; --format hub writes a folder")
    tmp = _temp_folder(dst)
    try:
        yield tmp
        if dst.exists():
            for name in HUB_FILES:
                os.replace(tmp / name, dst / name)
        else:
            os.replace(tmp, dst)
    except VisionZooError as e:  # core.files' one line about a file in the temp folder: it is dst's to the user
        raise type(e)(str(e).replace(str(tmp), str(dst))) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _temp_folder(dst: Path) -> Path:
    """A new folder beside dst, named as core.files names its temp files; made by mkdir, so it has the mode a
    plain mkdir gives (mkdtemp's would be 0700)."""
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(100):
            tmp = dst.parent / f".{dst.name}{TEMP_MARK}{secrets.token_hex(4)}"
            with contextlib.suppress(FileExistsError):
                tmp.mkdir()
                return tmp
        raise FileExistsError(f"no free temp folder name beside {dst}")
    except OSError as e:
        raise ConfigError(f"cannot write {dst}: {e.strerror or e} ({dst.parent})") from None


def hub_client(repo_id: str) -> Any:
    """The HfApi that `--push-to-hub repo_id` uploads with, checked before any export work: the package (the
    hub extra), a well-formed repo id and a login (HF_TOKEN or the saved token, as huggingface_hub finds
    them); each is a one-line error naming the flag."""
    hf = require("huggingface_hub", "hub", "--push-to-hub")
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except ValueError as e:  # HFValidationError
        raise ConfigError(f"--push-to-hub {repo_id!r}: {_first_line(e)} (expected NAME or ORG/NAME)") from None
    if not hf.get_token():
        # without a token create_repo fails only after the export: say so now, and how to log in
        raise ConfigError(f"--push-to-hub needs a Hugging Face login: {LOGIN_HINT}")
    return hf.HfApi()


def push_hub(api: Any, folder: Path, repo_id: str, private: bool = False,
             commit_message: str | None = None) -> tuple[str, str]:
    """Upload folder (all of it: a model card README.md put there goes too) to the model repo repo_id in one
    commit, creating the repo if missing; returns the repo's URL and full id (ORG/NAME: a NAME alone is the
    user's). A failure is one line; the folder stays."""
    try:
        # private=None: the hub's default (public, or the organisation's); an existing repo keeps its visibility
        url = api.create_repo(repo_id, repo_type="model", exist_ok=True, private=True if private else None)
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model",
                          commit_message=commit_message or DEFAULT_COMMIT_MESSAGE)
    except Exception as e:  # HTTP errors (401/403: the token; 404; network): the library's own first line
        raise VisionZooError(f"--push-to-hub {repo_id}: upload failed ({type(e).__name__}: {_first_line(e)}); "
                             f"{folder} is written and kept: push it again once that is fixed") from None
    # create_repo's RepoUrl: the repo's address on the endpoint used, and its full id
    return (str(url) if url else f"https://huggingface.co/{repo_id}"), str(getattr(url, "repo_id", None) or repo_id)


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
