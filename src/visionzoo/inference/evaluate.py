"""The one file-level evaluation path: any model file over a validation split (or any dataset).

`eval`, `demo`, the FixRes size sweep, the long-tail evaluation and `tau-norm` all come through here, so
they all get sharding under torchrun, the device-side prefetch and the same metrics (engine.evaluate).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset

from ..config import DataConfig
from ..core.distributed import DistInfo, init_distributed
from ..data.loader import DeviceNormalizer
from ..engine.evaluate import evaluate_model
from ..engine.tta import check_tta
from .defaults import CONFUSION_UNASKED_MAX
from .eval_data import eval_loader, loader_for, resolve_data
from .model_info import ModelInfo
from .model_spec import source_label
from .reports import class_counts, confusion_matrix, metrics_from_counts
from .runtime import ModelSource, Runner, load_runner


def evaluate(
    model_path: ModelSource,
    data: DataConfig | str | None = None,
    batch_size: int = 256,
    device: str = "auto",
    precision: str = "fp32",
    channels_last: bool = False,
    progress: bool = True,
    backend: str = "eager",
    raw_weights: bool = False,
    confusion: bool | None = None,
    tta: str | None = None,
) -> dict[str, Any]:
    """Evaluate a model file on a validation split; preprocessing defaults to the file's own.

    model_path: a visionzoo checkpoint or any file `visionzoo export`/`quantize` wrote (.onnx, .pt2,
    .ts, .safetensors), or a ModelSpec (a model name with weights from anywhere). data: where the split is;
    None uses the data the model was trained with; a string is a data set path (an ImageFolder root with
    val/, `builtin:digits`, a pack) read with the model's own preprocessing.
    Validation class folders are mapped through the model's class names, so a missing or extra
    folder cannot shift labels. Returns top1/top5 (percent), loss, num_images, per_class (each with
    precision/recall/F1 in percent) and confusion_matrix ([true][predicted] counts): with confusion=True, or
    None (the default) and at most CONFUSION_UNASKED_MAX classes; never with False.
    tta: flip | flip+crops (engine.tta) adds "tta": {"mode", "views", "top1", "top5", "loss"} beside the plain
    numbers, for every format (the views are made from the normalised batch, so ONNX and TorchScript files run
    them as they run the plain batch); refused for a file exported with its TTA built in, which reports
    "built_in_tta" instead.
    """
    if isinstance(data, str):
        data = DataConfig(data=data)
    check_tta(tta)  # a bad value before any loading
    dist = init_distributed(device)
    runner = load_runner(model_path, dist.device, precision, backend, channels_last, raw_weights)
    baked = runner.info.extra.get("tta")
    check_tta(tta, baked, source_label(model_path))
    result, info = evaluate_runner(runner, resolve_data(runner.info, data, model_path), dist, batch_size=batch_size,
                                   progress=progress, channels_last=channels_last, collect=True, tta=tta)
    if baked:
        result["built_in_tta"] = baked
    add_class_report(result, confusion)
    label = source_label(model_path)
    result.update(checkpoint=label, model=info.model_name, weights=info.extra.get("weights_used", "raw"),
                  format=runner.fmt, precision=runner.precision,
                  quantized=info.quantized, img_size=info.img_size, crop_pct=info.crop_pct,
                  interpolation=info.interpolation)
    return result


def add_class_report(result: dict[str, Any], confusion: bool | None = None) -> None:
    """Turn evaluate_model's collected outputs into per-class precision/recall/F1 (merged into
    result["per_class"]) and, where asked (see evaluate), the confusion matrix; the per-image arrays are
    dropped, as JSON has no use for them."""
    outputs = result.pop("outputs")
    names = [row["class"] for row in result["per_class"]]
    labels, preds = torch.from_numpy(outputs["label"]), torch.from_numpy(outputs["pred"])
    for row, metrics in zip(result["per_class"], metrics_from_counts(*class_counts(labels, preds, len(names)), names)):
        row.update(precision=metrics["precision"], recall=metrics["recall"], f1=metrics["f1"])
    if confusion or (confusion is None and len(names) <= CONFUSION_UNASKED_MAX):
        result["confusion_matrix"] = confusion_matrix(labels, preds, len(names)).tolist()


def evaluate_runner(runner: Runner, data: DataConfig, dist: DistInfo, split: str = "val", batch_size: int = 256,
                    progress: bool = True, channels_last: bool = False, desc: str = "eval", collect: bool = False,
                    logit_adjust: torch.Tensor | None = None,
                    tta: str | None = None) -> tuple[dict[str, Any], ModelInfo]:
    """A loaded model over one split of data (data's preprocessing flags over the file's own); returns the
    metrics (engine.evaluate.evaluate_model, with tta's beside them) and the ModelInfo the split was read with."""
    loader, classes, info = eval_loader(runner.info, data, split, batch_size, dist.rank, dist.world_size,
                                        dist.device.type == "cuda")
    normalizer = DeviceNormalizer(info.mean, info.std, dist.device, channels_last, reuse=True)
    result = evaluate_model(runner, loader, normalizer, info.num_classes, "fp32", classes,
                            progress and dist.is_main, desc, collect, logit_adjust, tta)
    return result, info


def evaluate_dataset(runner: Runner, dataset: Dataset, data: DataConfig, dist: DistInfo, batch_size: int = 256,
                     classes: list[str] | None = None, collect: bool = False,
                     logit_adjust: torch.Tensor | None = None) -> dict[str, Any]:
    """A loaded model over a dataset made elsewhere (e.g. an open-set list), with data's loader settings."""
    info = runner.info
    loader = loader_for(dataset, data, batch_size, dist.rank, dist.world_size, dist.device.type == "cuda")
    normalizer = DeviceNormalizer(info.mean, info.std, dist.device, reuse=True)
    return evaluate_model(runner, loader, normalizer, info.num_classes, "fp32", classes, False, "eval", collect,
                          logit_adjust)
