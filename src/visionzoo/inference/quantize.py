"""Post-training static quantisation with a calibration set of N batches (the seed's quant_batch_num).

Checkpoints (and models named with their weights) go through PyTorch's PT2E flow with the x86 inductor
quantizer (int8 activations and per-channel int8 weights; run it with --backend compile to get the int8
kernels); ONNX files go through ONNX Runtime's QDQ static quantisation, which also offers the seed's int16 mode.

Calibration needs images, not labels: a split of a data set (whatever its class folders are called) or any
folder of images (`calib_data`: any depth, any file names). `compare=True` then measures the quantised model
against the original: top-1 on a labelled validation split where there is one, else how often the two agree
on the calibration images.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS

from ..config import DataConfig, eval_size, spelled
from ..config.limits import check_batch_memory, cpu_count
from ..core.distributed import DistInfo
from ..core.errors import ConfigError, DataError
from ..core.extras import require
from ..core.files import atomic_path
from ..core.quiet import quiet_libraries
from ..data.datasets import ImageDataset, Samples
from ..data.loader import DeviceNormalizer, make_loader
from ..data.transforms import eval_transform
from .eval_data import eval_dataset, first_batches, resolve_data
from .evaluate import evaluate_runner
from .model_info import META_KEY, ModelInfo, with_preprocessing
from .model_spec import ModelSpec, source_label
from .runtime import ModelSource, Runner, detect_format, load_module, load_runner, onnx_info

log = logging.getLogger("visionzoo")

DTYPES = ("int8", "int16")
# the original model is "confident" about an image when its top probability is above this: on such images a
# faithful int8 model keeps the original's top-1 (a coin toss between two classes may flip either way)
CONFIDENT = 0.3
# the data keys that name where images are (any of them set: a data set is given)
SOURCE_KEYS = ("data", "train_list", "val_list", "train_root", "val_root", "train_urls", "val_urls", "dummy")


def folder_images(root: str | Path) -> Samples:
    """Every image file under root, at any depth and under any names, as unlabelled samples (sorted paths).

    Hidden files and folders are left out: macOS's `._IMG_0001.JPG` companions and `.thumbnails/` carry an
    image suffix but are no photos. Linked folders are followed, each real folder once.
    """
    root = Path(root)
    where = spelled("calib_data", str(root))
    if not root.is_dir():
        raise DataError(f"{where}: {'not a folder' if root.exists() else 'no such folder'}")
    files: list[str] = []
    seen: set[str] = set()
    for folder, subfolders, names in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:  # a link back up the tree
            subfolders[:] = []
            continue
        seen.add(real)
        subfolders[:] = [d for d in subfolders if not d.startswith(".")]
        files += [os.path.join(folder, name) for name in names
                  if not name.startswith(".") and name.lower().endswith(IMG_EXTENSIONS)]
    if not files:
        raise DataError(f"{where}: no images ({', '.join(IMG_EXTENSIONS)}) in it or its subfolders")
    return Samples([(f, 0) for f in sorted(files)], ["unlabelled"])


def _split_images(info: ModelInfo, data: DataConfig, split: str) -> Dataset:
    """A split of a data set through the model's evaluation transform, its labels unused: the split's own
    class folders stand, so a labelled set whose classes are not the model's calibrates as well."""
    unlabelled = info if data.dummy else replace(info, classes=None, num_classes=0)
    try:
        return eval_dataset(unlabelled, data, split)[0]
    except DataError:
        if split == "val":
            raise
        log.warning("no %s split for calibration; calibrating on the validation split", split)
        return eval_dataset(unlabelled, data, "val")[0]


def calibration_batches(info: ModelInfo, data: DataConfig | None, n: int, batch_size: int, split: str = "train",
                        seed: int = 0, folder: str | Path | None = None) -> list[torch.Tensor]:
    """n normalised batches of a seeded random subset of the images under folder, or else of data's split
    (falling back to val). Labels are never read.

    Folders list images class by class, so the first n*batch images could all be one class; a
    random subset calibrates on the whole distribution.
    """
    if n < 1:
        raise ConfigError(f"{spelled('calib_batches')} must be at least 1")
    settings = data or DataConfig()  # loader settings (workers, decode) where no data set is given
    if folder is not None:
        info = with_preprocessing(info, eval_size(settings.eval_img_size, settings.img_size), settings.crop_pct,
                                  settings.interpolation)
        transform = eval_transform(info.img_size, info.crop_pct, info.interpolation, settings.decode)
        ds: Dataset = ImageDataset(folder_images(folder), transform, settings.skip_bad_images)
    elif data is None or not any(getattr(data, k) for k in SOURCE_KEYS):
        raise ConfigError(f"no calibration images: give {spelled('calib_data')} (any folder of images) or "
                          f"{spelled('data')}")
    else:
        ds = _split_images(info, data, split)
    if isinstance(ds, ImageDataset):
        order = torch.randperm(len(ds.samples.items), generator=torch.Generator().manual_seed(seed)).tolist()
        ds = ImageDataset(ds.samples.subset(order[: n * batch_size]), ds.transform, ds.skip_bad)
    # before the first batch: an absurd batch at the model's size would end in the OOM killer, not an error
    check_batch_memory(min(batch_size, len(ds)), info.img_size,  # type: ignore[arg-type]
                       f"{spelled('batch_size')} and the model's input size")
    loader = make_loader(ds, batch_size, min(settings.workers, cpu_count()), False)
    batches = first_batches(loader, DeviceNormalizer(info.mean, info.std, torch.device("cpu")), n)
    if not batches:
        raise DataError("no calibration images found")
    if len(batches) < n:
        log.warning("only %d calibration batches available (asked for %d)", len(batches), n)
    return batches


def quantize_pt2e(model: torch.nn.Module, batches: list[torch.Tensor]) -> torch.export.ExportedProgram:
    """int8 static PT2E quantisation for x86 (oneDNN via inductor); returns a dynamic-batch program."""
    # torchao's import-time note, and what torch and torchao say about their internals while they trace
    with quiet_libraries():
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
    """ONNX Runtime's static QDQ quantisation (int8: uint8 activations, int8 per-channel weights; or int16)."""
    onnx = require("onnx", "quantize", "ONNX quantisation")
    ort = require("onnxruntime", "quantize", "ONNX quantisation")  # loaded first: quiet_libraries quiets its logger
    from onnxruntime.quantization import (
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fd, pre = tempfile.mkstemp(suffix=".onnx", dir=output.parent)
    os.close(fd)
    try:
        with quiet_libraries(), _library_messages("onnxruntime") as said:
            sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            inp = sess.get_inputs()[0]
            static = inp.shape[0] if isinstance(inp.shape[0], int) else None
            reader = _Reader(inp.name, batches, static)
            quant_pre_process(str(path), pre)  # shape inference + graph fusions ORT recommends first
            act, weight = ((QuantType.QUInt8, QuantType.QInt8) if dtype == "int8"
                           else (QuantType.QInt16, QuantType.QInt16))
            graph = onnx.load(pre, load_external_data=False)
            opset = max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx"))
            # the model's outputs (the logits) stay float: read as floats anyway, rounded to 256 levels they
            # would only lose precision, enough to flip a near tie between two classes
            outputs = {o.name for o in graph.graph.output}
            heads = sorted({n.op_type for n in graph.graph.node if outputs.intersection(n.output)})
            quantize_static(pre, str(output), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=act, weight_type=weight,
                            # 16-bit Q/DQ exist in the standard domain from opset 21; before that ORT's own ops
                            extra_options={"UseQDQContribOps": dtype == "int16" and opset < 21,
                                           "OpTypesToExcludeOutputQuantization": heads})
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
    data: DataConfig | None,
    output: str | Path,
    calib_batches: int = 10,
    batch_size: int = 32,
    dtype: str = "int8",
    calib_split: str = "train",
    raw_weights: bool = False,
    calib_data: str | Path | None = None,
    compare: bool = False,
) -> dict[str, Any]:
    """Quantise a checkpoint or a ModelSpec (-> .pt2, PT2E) or an ONNX file (-> .onnx, ORT QDQ); returns a report.

    Calibration reads the images under calib_data (any folder, no classes needed), else calib_split of data (or
    of the data the model records). compare: the report adds "original" and "quantized" top-1/top-5 and
    "top1_drop" on a labelled validation split (data, or the model's own), or where there is none, "agreement":
    how often the quantised model's top-1 is the original's on the calibration images.
    """
    output = Path(output)
    label = source_label(model_path)
    if dtype not in DTYPES:
        raise ConfigError(f"{spelled('dtype', dtype)}: choose from {', '.join(DTYPES)}")
    fmt = "weights" if isinstance(model_path, ModelSpec) else detect_format(model_path)
    if fmt == "onnx" and output.suffix != ".onnx":
        raise ConfigError(f"{spelled('output', str(output))}: quantising an ONNX file writes ONNX; name the output "
                          "*.onnx")
    if fmt != "onnx" and dtype != "int8":
        raise ConfigError(
            f"{spelled('dtype', dtype)} for {label}: PyTorch's x86 quantizer has int8 kernels only; for int16 export "
            "to ONNX first (visionzoo export --format onnx) and quantise that file")
    if fmt != "onnx" and output.suffix != ".pt2":
        raise ConfigError(f"{spelled('output', str(output))}: a PT2E int8 model is a torch.export program; name the "
                          "output *.pt2")
    # loaded once: the calibration, the program and the comparison all use this module
    if fmt == "onnx":
        info, original = onnx_info(Path(str(model_path))), None
    else:
        model, info = load_module(model_path, raw_weights)
        original = Runner(model.eval(), info, torch.device("cpu"), fmt, module=model)
    file_source = model_path if isinstance(model_path, (str, Path)) else None
    if calib_data is None:  # the data set calibrates (and later scores): the one given, else the model's own
        data = resolve_data(info, data, file_source)
    output.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    batches = calibration_batches(info, data, calib_batches, batch_size, calib_split, folder=calib_data)
    method = "onnxruntime QDQ static" if fmt == "onnx" else "PT2E X86InductorQuantizer (static, per-channel weights)"
    qinfo = replace(info, quantized=dtype, extra={**info.extra, "calib_batches": len(batches),
                                                  "calib_batch_size": batch_size, "method": method})
    with atomic_path(output) as tmp:
        if fmt == "onnx":
            quantize_onnx(Path(str(model_path)), tmp, batches, dtype, qinfo)
        else:
            program = quantize_pt2e(model, batches)
            torch.export.save(program, str(tmp), extra_files={f"{META_KEY}.json": qinfo.to_json()})
    report: dict[str, Any] = {
        "output": str(output), "source": label, "weights": info.extra.get("weights_used", "raw"), "dtype": dtype,
        "method": method, "calib_source": str(calib_data) if calib_data is not None else calib_split,
        "calib_batches": len(batches), "calib_images": sum(len(b) for b in batches),
        "seconds": round(time.perf_counter() - t0, 2)}
    if compare:
        before = original or load_runner(Path(str(model_path)), "cpu")
        # the int8 program is measured as deployed: through inductor's int8 kernels
        after = load_runner(output, "cpu", backend="compile" if output.suffix == ".pt2" else "eager")
        report.update(_compare(before, after, batches, data, calib_data, file_source, batch_size))
    return report


def _compare(before: Runner, after: Runner, batches: list[torch.Tensor], data: DataConfig | None,
             calib_data: str | Path | None, file_source: ModelSource | None, batch_size: int) -> dict[str, Any]:
    """Top-1 of both models on a labelled validation split, or where there is none their top-1 agreement on the
    calibration images (a folder of photos has no labels to score)."""
    try:
        labelled = resolve_data(before.info, data, file_source) if calib_data is not None else data
        assert labelled is not None  # resolved before calibrating when no calib_data was given
        scores = {}
        for key, runner in (("original", before), ("quantized", after)):
            r, _ = evaluate_runner(runner, labelled, DistInfo(), batch_size=batch_size, progress=False)
            scores[key] = {"top1": r["top1"], "top5": r["top5"], "num_images": r["num_images"]}
        return {**scores, "top1_drop": scores["original"]["top1"] - scores["quantized"]["top1"]}
    except DataError as e:  # no data set, or one whose classes are not the model's: labels cannot score it
        log.info("no labelled validation split to score top-1 on (%s): comparing with the original on the "
                 "calibration images", e)
    agree = confident = confident_agree = total = 0
    for x in batches:
        probs = before(x).softmax(dim=1)
        top_p, top_i = probs.max(dim=1)
        same = top_i == after(x).argmax(dim=1)
        sure = top_p > CONFIDENT
        total += len(x)
        agree += int(same.sum())
        confident += int(sure.sum())
        confident_agree += int((same & sure).sum())
    return {"agreement": {"images": total, "top1_agreement": 100.0 * agree / total, "confidence": CONFIDENT,
                          "confident_images": confident,
                          "confident_agreement": 100.0 * confident_agree / confident if confident else None}}
