"""Offline model files (the seeds' "offline model"): TorchScript, torch.export, ONNX, safetensors, and the
Hugging Face hub folder timm reads (hub.py).

Every export is written to a temp file (a temp folder for hub), checked against the eager model on a real
batch, and only then renamed into place: a file that does not reproduce the model is never left behind.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import DataConfig, spelled
from ..core.errors import ConfigError, DataError, ModelFileError
from ..core.extras import require
from ..core.files import atomic_path
from ..core.quiet import quiet_libraries
from ..data.loader import DeviceNormalizer
from ..engine.tta import FlipTTA, check_tta
from .calibration import TemperatureScaled
from .defaults import DEFAULT_ATOL, DEFAULT_OPSET, DEFAULT_RTOL, EXPORT_BATCH_SIZE, EXPORT_SUFFIXES
from .eval_data import eval_loader, first_batches, resolve_data
from .hub import atomic_folder, hub_bytes, load_hub, timm_equivalent, write_hub
from .model_info import META_KEY, ModelInfo
from .model_spec import source_label
from .runtime import SUFFIX_FORMATS, ModelSource, load_module, load_runner

log = logging.getLogger("visionzoo")

FORMATS = EXPORT_SUFFIXES  # format -> suffix of the file it writes (inference.defaults, which cli/export shows)
# the formats that hold a program, so can hold the flip TTA's second forward; safetensors and hub hold weights only
TTA_FORMATS = ("onnx", "torchscript", "export")
DYNAMO_MIN_OPSET = 18  # torch.onnx's torch.export-based exporter writes opset 18 and newer


class ExportCheckError(ModelFileError):
    """The exported file's outputs differ from the eager model's beyond the tolerance."""


@dataclass
class CheckResult:
    max_abs_diff: float
    limit: float
    batch_size: int
    input: str  # "real" or "random"
    top1_agreement: float


def compare(reference: torch.Tensor, got: torch.Tensor, atol: float, rtol: float) -> tuple[float, float]:
    """Max |ref - got| and the allowed limit atol + rtol * max|ref|."""
    diff = (reference.float() - got.float()).abs().max().item()
    return diff, atol + rtol * reference.abs().max().item()


def sample_input(info: ModelInfo, data: DataConfig | None, batch_size: int, seed: int = 0,
                 source: object = None) -> tuple[torch.Tensor, str]:
    """A normalised batch of real images from the model's data, or random pixels if it has none here.
    source: the model file, where the model's relative data paths start (eval_data.resolve_data)."""
    try:
        loader, _, _ = eval_loader(info, replace(resolve_data(info, data, source), workers=0), "val", batch_size)
        batches = first_batches(loader, DeviceNormalizer(info.mean, info.std, torch.device("cpu")), 1)
        if batches and len(batches[0]) == batch_size:
            return batches[0], "real"
    except DataError as e:
        if data is not None:  # asked for explicitly: its failure is the user's to fix
            raise
        log.warning("no data for the export check (%s); using random pixels", e)
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch_size, 3, info.img_size, info.img_size), dtype=torch.uint8, generator=g)
    return DeviceNormalizer(info.mean, info.std, torch.device("cpu"))(images), "random"


def _write(model: nn.Module, info: ModelInfo, fmt: str, path: Path, example: torch.Tensor,
           dynamic_batch: bool, opset: int) -> None:
    meta = info.to_json()
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path), metadata={META_KEY: meta})
    elif fmt == "torchscript":
        with quiet_libraries():  # torch.jit is deprecated upstream but still the seed's "jit" mode
            traced = torch.jit.trace(model, example, check_trace=False)
            torch.jit.save(traced, str(path), _extra_files={f"{META_KEY}.json": meta})
    elif fmt == "export":
        shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic_batch else None
        ep = torch.export.export(model, (example,), dynamic_shapes=shapes)
        torch.export.save(ep, str(path), extra_files={f"{META_KEY}.json": meta})
    elif fmt == "onnx":
        onnx = require("onnx", "export", "ONNX export")
        if opset >= DYNAMO_MIN_OPSET:
            require("onnxscript", "export", "ONNX export")  # torch's dynamo exporter builds the graph with it
            with quiet_libraries():  # onnxscript's optimiser logs every pass at INFO
                torch.onnx.export(model, (example,), str(path), input_names=["input"], output_names=["logits"],
                                  dynamic_shapes=({0: "batch"},) if dynamic_batch else None, opset_version=opset,
                                  dynamo=True, verbose=False,
                                  external_data=False)  # one self-contained file (classifiers are far below 2 GB)
        else:  # older opsets (the seed's ATC wants 11): only the TorchScript-based exporter writes them
            with quiet_libraries():  # the TorchScript-based exporter's deprecation
                axes = {"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None
                torch.onnx.export(model, (example,), str(path), input_names=["input"], output_names=["logits"],
                                  dynamic_axes=axes, opset_version=opset, dynamo=False)
        proto = onnx.load(str(path))
        written = max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
        if written != opset:  # never hand back another opset than asked for
            raise ExportCheckError(f"asked for ONNX opset {opset}, the exporter wrote {written}")
        entry = proto.metadata_props.add()
        entry.key, entry.value = META_KEY, meta
        onnx.save(proto, str(path))
    else:
        raise ConfigError(f"--format {fmt!r}: choose from {', '.join(FORMATS)}")


def check_output_name(fmt: str, output: Path) -> None:
    """The file's suffix must be one its format is read back by (runtime picks the loader from the suffix
    alone): `--output m.pt2` for ONNX would be written, then fail to load in the check, or later anywhere."""
    fits = [suffix for suffix, f in SUFFIX_FORMATS.items() if f == fmt]
    if not fits or output.suffix.lower() in fits:
        return  # hub writes a folder: any name
    given = f"a {output.suffix} name" if output.suffix else "a name without an extension"
    raise ConfigError(f"{spelled('output', str(output))}: {given} does not fit the {fmt} format, whose files end "
                      f"in {' or '.join(fits)}: use {output.with_suffix(fits[0])}")


def export_model(
    checkpoint: ModelSource,
    fmt: str,
    output: str | Path,
    img_size: int | None = None,
    dynamic_batch: bool = False,
    opset: int = DEFAULT_OPSET,
    batch_size: int = EXPORT_BATCH_SIZE,
    data: DataConfig | None = None,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    raw_weights: bool = False,
    tta: str | None = None,
) -> dict[str, Any]:
    """Export a checkpoint to fmt at output, self-checked against eager; returns a report dict.

    The exported model takes a normalised float NCHW batch (mean/std are in its metadata) and
    returns logits. Without dynamic_batch the batch size is fixed at batch_size. hub: output is a folder
    (config.json, model.safetensors) that timm loads as `local-dir:FOLDER`; any batch size.
    tta="flip" (onnx, torchscript, export): the file computes (m(x) + m(x.flip(-1))) / 2, the logits eval's
    flip TTA averages (engine.tta.FlipTTA), and its metadata says so (extra["tta"]), so eval/predict refuse to
    apply TTA to it again.
    A calibrated checkpoint (`eval --calibrate`) exports calibrated logits, model(x) / T: onnx, torchscript and
    export files have the division in their graph (calibration.TemperatureScaled) and say so in their metadata
    (temperature_baked), so the runner does not divide again; a safetensors file holds the weights and T in its
    metadata, which the runner divides by; a hub folder is the model as timm builds it, uncalibrated (a warning
    says so).
    """
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: choose from {', '.join(FORMATS)}")
    if check_tta(tta) is not None and tta != "flip":
        raise ConfigError(f"--tta {tta}: export builds in flip TTA only (--tta flip); its crops stay with eval/predict")
    if tta and fmt not in TTA_FORMATS:
        raise ConfigError(f"--tta {tta}: a {fmt} export holds weights only; build TTA into "
                          f"{', '.join(TTA_FORMATS)} files")
    output = Path(output)
    check_output_name(fmt, output)
    output.parent.mkdir(parents=True, exist_ok=True)
    model, info = load_module(checkpoint, raw_weights)
    model.eval()
    if img_size:
        info.img_size = img_size
    info.extra["exported_from"] = source_label(checkpoint)
    if tta:  # the wrapper is what is written and checked; the metadata keeps eval from flipping it again
        model = FlipTTA(model).eval()
        info.extra["tta"] = tta
    temperature = info.temperature
    if temperature and fmt in TTA_FORMATS:  # a program: the division goes into its graph, once
        model = TemperatureScaled(model, temperature).eval()
        info.temperature_baked = True
    elif temperature and fmt == "hub":
        log.warning("%s: the hub folder holds the model as timm builds it, without the temperature T=%.4g "
                    "`eval --calibrate` stored (timm has no place for it): its probabilities are uncalibrated",
                    output, temperature)
    # hub: timm's twin of the model, found before any work (an architecture timm lacks is refused here); an
    # eager module, so any batch size
    timm_model = timm_equivalent(model, info.model_name) if fmt == "hub" else None
    dynamic_batch = dynamic_batch or timm_model is not None
    # torch.export specialises sizes 0 and 1, so a dynamic batch needs an example of at least 2
    example_bs = max(batch_size, 2) if dynamic_batch else batch_size
    check_bs = max(example_bs, 4) if dynamic_batch else batch_size
    check, source = sample_input(info, data, check_bs, source=checkpoint)
    with torch.no_grad():
        reference = model(check)
        if temperature and fmt == "safetensors":  # the runner divides a weights file's logits by its T
            reference = reference / temperature

    def checked(got: torch.Tensor) -> CheckResult:
        diff, limit = compare(reference, got, atol, rtol)
        agreement = (got.argmax(1) == reference.argmax(1)).float().mean().item()
        if diff > limit:
            raise ExportCheckError(
                f"{output}: {fmt} outputs differ from eager by {diff:.3g} "
                f"(limit {limit:.3g} = {atol} + {rtol} * max|logit|); file not written")
        return CheckResult(diff, limit, check_bs, source, agreement)

    if timm_model is not None:
        with atomic_folder(output) as tmp:
            write_hub(timm_model, info, tmp)
            with torch.no_grad():  # loaded as timm loads it: what users of the folder get
                result = checked(load_hub(tmp)(check))
        size = hub_bytes(output)
    else:
        with atomic_path(output) as tmp:
            _write(model, info, fmt, tmp, check[:example_bs], dynamic_batch, opset)
            result = checked(load_runner(tmp, "cpu")(check))
        size = output.stat().st_size
    return {"output": str(output), "format": fmt,
            "weights": info.extra.get("weights_used", "raw"), "bytes": size, "img_size": info.img_size,
            "dynamic_batch": dynamic_batch, "opset": opset if fmt == "onnx" else None, "tta": tta,
            "temperature": temperature if fmt != "hub" else None, "temperature_baked": info.temperature_baked,
            "check": result.__dict__}
