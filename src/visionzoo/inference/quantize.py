"""Post-training static quantisation with a calibration set of N batches (the seed's quant_batch_num).

Checkpoints go through PyTorch's PT2E flow with the x86 inductor quantizer (int8 activations and
per-channel int8 weights; run it with --backend compile to get the int8 kernels); ONNX files go
through ONNX Runtime's QDQ static quantisation, which also offers the seed's int16 mode.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..config import DataConfig
from ..core.errors import ConfigError, DataError
from ..core.extras import require
from ..core.files import atomic_path
from ..data.datasets import ImageDataset
from ..data.loader import DeviceNormalizer, make_loader
from .eval_data import eval_dataset, first_batches
from .model_info import META_KEY, ModelInfo
from .model_spec import ModelSpec, source_label
from .runtime import ModelSource, detect_format, load_module, onnx_info

log = logging.getLogger("visionzoo")

DTYPES = ("int8", "int16")

# the libraries quantisation drives; what they log below ERROR is about their own internals
LIBRARY_LOGGERS = ("torch", "torchao", "onnxruntime", "onnx", "onnxscript", "onnx_ir")


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """While torch, torchao and ONNX Runtime quantise or run a quantised model: their warnings and log
    records below ERROR stay out of the output (e.g. torch's "No CUDA runtime is found" when inductor
    compiles on a CPU machine). visionzoo's own log lines and every exception still come through;
    visionzoo itself never warns through the warnings module, so all warnings here are the libraries'."""
    saved = {name: logging.getLogger(name).level for name in LIBRARY_LOGGERS}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in LIBRARY_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
        _ort_severity(3)  # onnxruntime's C++ logger writes to stderr itself: errors only
        try:
            yield
        finally:
            for name, level in saved.items():
                logging.getLogger(name).setLevel(level)
            _ort_severity(2)  # onnxruntime's default (warnings); it has no getter to save the old one


def _ort_severity(level: int) -> None:
    """onnxruntime's default logger severity, if onnxruntime is loaded (never imported just for this)."""
    ort = sys.modules.get("onnxruntime")
    if ort is not None and hasattr(ort, "set_default_logger_severity"):
        ort.set_default_logger_severity(level)


def calibration_batches(info: ModelInfo, data: DataConfig, n: int, batch_size: int, split: str,
                        seed: int = 0) -> list[torch.Tensor]:
    """n normalised batches of a seeded random subset of `split` (falls back to val).

    Folders list images class by class, so the first n*batch images could all be one class; a
    random subset calibrates on the whole distribution.
    """
    if n < 1:
        raise ConfigError("--calib-batches must be at least 1")
    try:
        ds, _, _ = eval_dataset(info, data, split)
    except DataError:
        if split == "val":
            raise
        log.warning("no %s split for calibration; calibrating on the validation split", split)
        ds, _, _ = eval_dataset(info, data, "val")
    if isinstance(ds, ImageDataset):
        order = torch.randperm(len(ds.samples.items), generator=torch.Generator().manual_seed(seed)).tolist()
        ds = ImageDataset(ds.samples.subset(order[: n * batch_size]), ds.transform, ds.skip_bad)
    loader = make_loader(ds, batch_size, min(data.workers, os.cpu_count() or 1), False)
    batches = first_batches(loader, DeviceNormalizer(info.mean, info.std, torch.device("cpu")), n)
    if not batches:
        raise DataError("no calibration images found")
    if len(batches) < n:
        log.warning("only %d calibration batches available (asked for %d)", len(batches), n)
    return batches


def quantize_pt2e(model: torch.nn.Module, batches: list[torch.Tensor]) -> torch.export.ExportedProgram:
    """int8 static PT2E quantisation for x86 (oneDNN via inductor); returns a dynamic-batch program."""
    require("torchao", "quantize", "PT2E int8 quantisation")
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
    )

    batch = torch.export.Dim("batch", min=1, max=4096)
    example = batches[0][:2] if len(batches[0]) >= 2 else torch.cat([batches[0]] * 2)
    # strict (dynamo) tracing keeps one source partition per call of a reused module (torchvision's
    # BasicBlock calls self.relu twice), which the quantizer's fusion patterns need
    graph = torch.export.export(model.eval(), (example,), dynamic_shapes=({0: batch},), strict=True).module()
    quantizer = X86InductorQuantizer()
    quantizer.set_global(get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for x in batches:
            prepared(x)
    converted = convert_pt2e(prepared)
    _drop_unused_tensors(converted)  # the fp32 weights the folded int8 ones replaced
    program = torch.export.export(converted, (example,), dynamic_shapes=({0: batch},), strict=True)
    program._example_inputs = None  # an int8 file holds int8 weights, not a calibration batch
    return program


def _drop_unused_tensors(gm: torch.fx.GraphModule) -> None:
    """Parameters and buffers no node reads: export would store them all, doubling the file."""
    used = {str(n.target) for n in gm.graph.nodes if n.op == "get_attr"}
    names = [n for n, _ in gm.named_parameters()] + [n for n, _ in gm.named_buffers()]
    for name in names:
        if name not in used:
            owner, _, attr = name.rpartition(".")
            delattr(gm.get_submodule(owner) if owner else gm, attr)


class _Reader:
    """onnxruntime CalibrationDataReader over prepared batches (split to a static batch if needed)."""

    def __init__(self, name: str, batches: list[torch.Tensor], static_batch: int | None):
        chunks = [c for b in batches for c in (b.split(static_batch) if static_batch else [b])]
        self.items = iter([{name: c.numpy()} for c in chunks if not static_batch or len(c) == static_batch])

    def get_next(self):
        return next(self.items, None)


def quantize_onnx(path: Path, output: Path, batches: list[torch.Tensor], dtype: str, info: ModelInfo) -> None:
    onnx = require("onnx", "quantize", "ONNX quantisation")
    ort = require("onnxruntime", "quantize", "ONNX quantisation")
    from onnxruntime.quantization import (
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    static = inp.shape[0] if isinstance(inp.shape[0], int) else None
    reader = _Reader(inp.name, batches, static)
    fd, pre = tempfile.mkstemp(suffix=".onnx", dir=output.parent)
    os.close(fd)
    try:
        with _library_messages("onnxruntime") as said:
            quant_pre_process(str(path), pre)  # shape inference + graph fusions ORT recommends first
            act, weight = ((QuantType.QUInt8, QuantType.QInt8) if dtype == "int8"
                           else (QuantType.QInt16, QuantType.QInt16))
            imports = onnx.load(pre, load_external_data=False).opset_import
            opset = max(o.version for o in imports if o.domain in ("", "ai.onnx"))
            quantize_static(pre, str(output), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=act, weight_type=weight,
                            # 16-bit Q/DQ exist in the standard domain from opset 21; before that ORT's own ops
                            extra_options={"UseQDQContribOps": dtype == "int16" and opset < 21})
    finally:
        Path(pre).unlink(missing_ok=True)
    if said:  # one line for what onnxruntime logs per tensor (e.g. a bias clipped to int32 by a tiny scale)
        log.info("onnxruntime: %s%s", said[0], f" (and {len(said) - 1} more notes like it)" if len(said) > 1 else "")
    proto = onnx.load(str(output))
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_KEY, info.to_json()
    onnx.save(proto, str(output))


@contextlib.contextmanager
def _library_messages(package: str) -> Iterator[list[str]]:
    """While a library runs: its log records (and any sent to the root logger, where onnxruntime warns once
    per tensor) are kept out of the output and collected, so the caller can say them in one line."""
    said: list[str] = []

    def keep(record: logging.LogRecord) -> bool:
        if record.name == "root" or record.name.startswith(package):
            if record.levelno >= logging.WARNING:  # its progress chatter goes unsaid
                said.append(record.getMessage())
            return False
        return True

    handlers = list(logging.getLogger().handlers)  # every record that reaches the output passes these
    for h in handlers:
        h.addFilter(keep)
    try:
        yield said
    finally:
        for h in handlers:
            h.removeFilter(keep)


def quantize(
    model_path: ModelSource,
    data: DataConfig,
    output: str | Path,
    calib_batches: int = 10,
    batch_size: int = 32,
    dtype: str = "int8",
    calib_split: str = "train",
    raw_weights: bool = False,
) -> dict[str, Any]:
    """Quantise a checkpoint or a ModelSpec (-> .pt2, PT2E) or an ONNX file (-> .onnx, ORT QDQ); returns a report."""
    output = Path(output)
    label = source_label(model_path)
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype!r}: choose from {', '.join(DTYPES)}")
    fmt = "weights" if isinstance(model_path, ModelSpec) else detect_format(model_path)
    output.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if fmt == "onnx":
        if output.suffix != ".onnx":
            raise ConfigError(f"--output {output}: quantising an ONNX file writes ONNX; name the output *.onnx")
        onnx_file = Path(str(model_path))
        info = onnx_info(onnx_file)
        batches = calibration_batches(info, data, calib_batches, batch_size, calib_split)
        info.quantized = dtype
        info.extra.update(calib_batches=len(batches), calib_batch_size=batch_size, method="onnxruntime QDQ static")
        with atomic_path(output) as tmp:
            quantize_onnx(onnx_file, tmp, batches, dtype, info)
    else:
        if dtype != "int8":
            raise ConfigError(
                f"--dtype {dtype} for {label}: PyTorch's x86 quantizer has int8 kernels only; for int16 export "
                "to ONNX first (visionzoo export --format onnx) and quantise that file")
        if output.suffix != ".pt2":
            raise ConfigError(f"--output {output}: a PT2E int8 model is a torch.export program; name the output *.pt2")
        model, info = load_module(model_path, raw_weights)
        batches = calibration_batches(info, data, calib_batches, batch_size, calib_split)
        program = quantize_pt2e(model, batches)
        info.quantized = "int8"
        info.extra.update(calib_batches=len(batches), calib_batch_size=batch_size,
                          method="PT2E X86InductorQuantizer (static, per-channel weights)")
        with atomic_path(output) as tmp:
            torch.export.save(program, str(tmp), extra_files={f"{META_KEY}.json": info.to_json()})
    return {"output": str(output), "source": label,
            "weights": info.extra.get("weights_used", "raw"), "dtype": dtype, "method": info.extra["method"],
            "calib_batches": len(batches), "calib_images": sum(len(b) for b in batches),
            "seconds": round(time.perf_counter() - t0, 2)}
