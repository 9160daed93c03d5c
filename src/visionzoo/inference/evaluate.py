"""The one file-level evaluation path: any model file over a validation split (or any dataset).

`eval`, `demo`, the FixRes size sweep, the long-tail evaluation and `tau-norm` all come through here, so
they all get sharding under torchrun, the device-side prefetch and the same metrics (engine.evaluate).
They all measure the model's own logits: a calibrated model's temperature (`eval --calibrate`), which predict,
serve and exported files apply, changes no number here (top-1 never, the loss otherwise would); calibrate=True
reports the temperature's effect beside them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..config import DataConfig
from ..core.distributed import DistInfo, init_distributed, is_main_process
from ..core.errors import ConfigError
from ..data.loader import DeviceNormalizer
from ..engine.evaluate import evaluate_model
from ..engine.multilabel import f1_scores, tune_thresholds
from ..engine.tta import check_tta
from ..models.checkpoint import Checkpoint, store_temperature, store_thresholds
from .calibration import calibration_report
from .defaults import CONFUSION_UNASKED_MAX
from .eval_data import eval_loader, loader_for, resolve_data
from .model_info import ModelInfo
from .model_spec import ModelSpec, source_label
from .predict import write_thresholds
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
    calibrate: bool = False,
    store: bool = True,
    tune_thresholds: bool = False,
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
    Every number is the model's own logits', a calibrated file's temperature left out ("stored_temperature" says
    it has one). calibrate: fit a softmax temperature T on the split's plain logits (inference.calibration) and
    add "calibration": {"temperature", "ece_before", "ece_after", "nll_before", "nll_after", "brier_before",
    "brier_after", "bins", "num_images", "reliability", "stored"}; with store (the default) T is written into the
    checkpoint (models.checkpoint.store_temperature), after which predict, serve and export return calibrated
    probabilities. "stored" is the checkpoint written, or None with "not_stored" saying why: another format
    (calibrate its checkpoint and export that), store=False, or raw_weights on a checkpoint with EMA weights
    (predict uses those).
    A multi-label model (engine.multilabel) reports mAP, f1_micro, f1_macro (at its stored thresholds, else 0.5)
    and per-class AP; tune_thresholds: per-class thresholds maximising F1 on this split, reported as "tuned"
    ({"thresholds", "f1_micro", "f1_macro"}) and, with store, written into the checkpoint for predict.
    """
    if isinstance(data, str):
        data = DataConfig(data=data)
    check_tta(tta)  # a bad value before any loading
    dist = init_distributed(device)
    runner = load_runner(model_path, dist.device, precision, backend, channels_last, raw_weights)
    baked = runner.info.extra.get("tta")
    check_tta(tta, baked, source_label(model_path))
    if calibrate and runner.info.extra.get("task") == "multilabel":
        raise ConfigError(f"calibrate: {source_label(model_path)} is a multi-label model (a sigmoid score per "
                          "class); temperature scaling calibrates a single-label model's softmax")
    multilabel = runner.info.extra.get("task") == "multilabel"
    if tune_thresholds and not multilabel:
        raise ConfigError(f"tune_thresholds: {source_label(model_path)} is a single-label model (thresholds are "
                          "for a multi-label model's sigmoid scores)")
    data = resolve_data(runner.info, data, model_path)
    result, info = evaluate_runner(runner, data, dist, batch_size=batch_size, progress=progress,
                                   channels_last=channels_last, collect=True, tta=tta, collect_logits=calibrate,
                                   multilabel=multilabel)
    if multilabel:
        result.pop("outputs", None)
        scores, targets = result.pop("scores"), result.pop("targets")
        if tune_thresholds:
            result["tuned"] = _tune(scores, targets, model_path, runner, store)
    if baked:
        result["built_in_tta"] = baked
    if runner.info.temperature:
        result["stored_temperature"] = runner.info.temperature
    if calibrate:
        split = f"the evaluated split ({data.val_list or data.val_root or data.data or 'dummy data'})"
        result["calibration"] = _calibrate(result.pop("logits"), split, model_path, runner, store, raw_weights)
    if not multilabel:
        add_class_report(result, confusion)
    label = source_label(model_path)
    result.update(checkpoint=label, model=info.model_name, weights=info.extra.get("weights_used", "raw"),
                  format=runner.fmt, precision=runner.precision,
                  quantized=info.quantized, img_size=info.img_size, crop_pct=info.crop_pct,
                  interpolation=info.interpolation)
    return result


def _tune(scores: np.ndarray, targets: np.ndarray, model_path: ModelSource, runner: Runner,
          store: bool) -> dict[str, Any]:
    """Per-class F1-best thresholds on the split, their F1, and where they were stored (a checkpoint only)."""
    thresholds = tune_thresholds(scores, targets)
    micro, macro, _ = f1_scores(scores, targets, thresholds)
    out: dict[str, Any] = {"thresholds": thresholds.tolist(), "f1_micro": micro, "f1_macro": macro}
    if runner.fmt == "checkpoint" and not isinstance(model_path, ModelSpec) and store:
        text = f"{model_path}.thresholds.txt"  # for a file exported before tuning: predict --thresholds
        if is_main_process():
            store_thresholds(model_path, out["thresholds"])
            write_thresholds(text, [runner.info.class_name(i) for i in range(len(thresholds))], out["thresholds"])
        out.update(stored=str(model_path), file=text)
    else:
        out["stored"] = None
    return out


def _calibrate(logits: dict[str, Any], split: str, model_path: ModelSource, runner: Runner, store: bool,
               raw_weights: bool) -> dict[str, Any]:
    """calibration_report of the collected logits; T written into model_path where it is a checkpoint, store is
    set and T was fitted on the weights predict uses (the EMA ones where the checkpoint has them)."""
    label = source_label(model_path)
    report = calibration_report(torch.from_numpy(logits["logits"]), torch.from_numpy(logits["label"]), split)
    if runner.fmt != "checkpoint" or isinstance(model_path, ModelSpec):
        why_not = f"{label} is a {runner.fmt} file; calibrate its checkpoint (then export it again) to keep T"
    elif not store:
        why_not = "store=False"
    elif raw_weights and Checkpoint.load(model_path).ema is not None:
        why_not = f"fitted on the raw weights, and predict uses {label}'s EMA weights; calibrate without raw_weights"
    else:
        if is_main_process():  # under torchrun every rank has the same T; one writes it
            store_temperature(model_path, report["temperature"])
        return {**report, "stored": str(model_path)}
    return {**report, "stored": None, "not_stored": why_not}


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
                    tta: str | None = None, collect_logits: bool = False,
                    multilabel: bool = False) -> tuple[dict[str, Any], ModelInfo]:
    """A loaded model over one split of data (data's preprocessing flags over the file's own); returns the
    metrics (engine.evaluate.evaluate_model, with tta's beside them) and the ModelInfo the split was read with.
    The model's own logits are measured, without a calibrated file's temperature (Runner.uncalibrated)."""
    loader, classes, info = eval_loader(runner.info, data, split, batch_size, dist.rank, dist.world_size,
                                        dist.device.type == "cuda")
    normalizer = DeviceNormalizer(info.mean, info.std, dist.device, channels_last, reuse=True)
    tuned = info.extra.get("thresholds") if multilabel else None
    result = evaluate_model(runner.uncalibrated(), loader, normalizer, info.num_classes, "fp32", classes,
                            progress and dist.is_main, desc, collect, logit_adjust, tta,
                            thresholds=np.asarray(tuned) if tuned else None, multilabel=multilabel,
                            collect_logits=collect_logits)
    return result, info


def evaluate_dataset(runner: Runner, dataset: Dataset, data: DataConfig, dist: DistInfo, batch_size: int = 256,
                     classes: list[str] | None = None, collect: bool = False,
                     logit_adjust: torch.Tensor | None = None) -> dict[str, Any]:
    """A loaded model over a dataset made elsewhere (e.g. an open-set list), with data's loader settings."""
    info = runner.info
    loader = loader_for(dataset, data, batch_size, dist.rank, dist.world_size, dist.device.type == "cuda")
    normalizer = DeviceNormalizer(info.mean, info.std, dist.device, reuse=True)
    return evaluate_model(runner.uncalibrated(), loader, normalizer, info.num_classes, "fp32", classes, False,
                          "eval", collect, logit_adjust)
