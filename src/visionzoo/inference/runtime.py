"""One way to run any model file: visionzoo checkpoint, safetensors, TorchScript, torch.export or ONNX.

`load_runner` gives a Runner: a callable from a normalised float batch to float logits, with the file's
ModelInfo (class names and preprocessing, model_info.py) and the precision it runs in. A calibrated model's logits
come divided by its temperature (`eval --calibrate`, inference.calibration), so predict, serve and bench return
calibrated probabilities whatever the format; `Runner.uncalibrated()` gives the model's own logits (what eval
measures).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.distributed import resolve_device
from ..core.errors import ConfigError, ModelFileError, VisionZooError
from ..core.extras import require
from ..core.precision import autocast, parse_precision, resolve_precision
from ..core.quiet import quiet_libraries
from ..models.checkpoint import model_from_checkpoint
from ..models.factory import create_model
from ..models.registry import model_cfg_of, model_name_of
from ..models.weights import check_tensors
from .defaults import EXPORT_SUFFIXES
from .model_info import META_KEY, ModelInfo
from .model_spec import ModelSpec, module_from_spec
from .pt2_archive import check_and_read_pt2

# the extensions export writes (defaults.EXPORT_SUFFIXES, the one list), and TorchScript's long spelling
SUFFIX_FORMATS = {suffix: fmt for fmt, suffix in EXPORT_SUFFIXES.items() if suffix} | {".torchscript": "torchscript"}


def detect_format(path: str | Path) -> str:
    """checkpoint | safetensors | torchscript | export | onnx, from the suffix alone.

    Content is never sniffed: a `.pth` is always loaded as a checkpoint (weights_only), so a program
    file cannot pass for one.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file not found: {path}")
    return SUFFIX_FORMATS.get(path.suffix.lower(), "checkpoint")


class OrtModule:
    """An onnxruntime session called like a module: float tensor in, logits tensor out (same device)."""

    def __init__(self, path: str | Path, device: torch.device):
        ort = require("onnxruntime", "export", "running an ONNX file")
        opts = ort.SessionOptions()
        providers: list[Any] = ["CPUExecutionProvider"]
        if device.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise ModelFileError(f"{path}: onnxruntime here has no CUDA provider (install onnxruntime-gpu)")
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
        self.session = ort.InferenceSession(str(path), opts, providers=providers)
        self.device = device
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self.input_shape = self.session.get_inputs()[0].shape
        self.num_outputs = self.session.get_outputs()[0].shape[-1]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        fixed = self.input_shape[0] if isinstance(self.input_shape[0], int) else None
        if fixed and len(x) != fixed:  # a fixed-batch file: run in chunks, padding the last one
            outs = []
            for chunk in x.split(fixed):
                pad = fixed - len(chunk)
                padded = torch.cat([chunk, chunk.new_zeros((pad, *chunk.shape[1:]))]) if pad else chunk
                outs.append(self._run(padded)[: len(chunk)])
            return torch.cat(outs)
        return self._run(x)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous().float()
        if self.device.type == "cuda":  # bind device memory both ways: no host round trip
            import numpy as np

            idx = self.device.index or 0
            torch.cuda.current_stream(self.device).synchronize()  # ORT runs on its own stream
            out = torch.empty((x.shape[0], self.num_outputs), device=self.device)
            io = self.session.io_binding()
            io.bind_input(self.input_name, "cuda", idx, np.float32, tuple(x.shape), x.data_ptr())
            io.bind_output(self.output_name, "cuda", idx, np.float32, tuple(out.shape), out.data_ptr())
            self.session.run_with_iobinding(io)
            return out
        out = self.session.run([self.output_name], {self.input_name: x.cpu().numpy()})[0]
        return torch.from_numpy(out)


@dataclass
class Runner:
    """A loaded model: call it with a normalised float NCHW batch on `device`, get float logits."""

    fn: Any  # nn.Module, TorchScript module, compiled module or OrtModule
    info: ModelInfo
    device: torch.device
    fmt: str
    backend: str = "eager"
    precision: str = "fp32"
    channels_last: bool = False
    module: nn.Module | None = None  # the eager module, where there is one (for training benches)
    calibrated: bool = True  # logits divided by the file's temperature (info.temperature), where it has one

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.precision):
            logits = self.fn(x).float()
        t = self.info.temperature
        if not t or self.calibrated == self.info.temperature_baked:  # already as asked
            return logits
        # calibrated: divide by T; uncalibrated with T baked into the file's graph (export): undo it
        return logits / t if self.calibrated else logits * t

    def uncalibrated(self) -> Runner:
        """The same model giving its own logits, without the temperature (the one baked into an exported
        file's graph undone): what eval measures top-1, loss and the calibration itself on."""
        return dataclasses.replace(self, calibrated=False)


def _read_checkpoint(path: Path, raw: bool = False) -> tuple[nn.Module, ModelInfo]:
    model, ckpt = model_from_checkpoint(path, raw)
    check_tensors(model.state_dict(), {}, path)  # NaN/inf weights would predict `nan` for every image
    info = ModelInfo.from_model_cfg(model_cfg_of(model), model_name_of(model), ckpt)
    info.extra["weights_used"] = ckpt.weights_kind(raw)
    return model, info


def _read_safetensors(path: Path) -> tuple[nn.Module, ModelInfo]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as f:
        meta = (f.metadata() or {}).get(META_KEY)
    if meta is None:
        raise ModelFileError(f"{path}: no visionzoo metadata; load bare weights with --weights instead")
    info = ModelInfo.from_json(meta, path)
    model = create_model(info.model_name, num_classes=info.num_classes)
    sd = load_file(str(path))
    check_tensors(sd, model.state_dict(), path)  # torch's shape error names no key in its first line
    model.load_state_dict(sd)
    return model, info


@contextlib.contextmanager
def _load_errors(path: Path, fmt: str):
    """Any failure to read a model file becomes one ModelFileError naming the file."""
    try:
        yield
    except VisionZooError:  # already one line naming what is wrong
        raise
    except Exception as e:  # protobuf, zip, safetensors, pickle, onnxruntime and state-dict errors alike
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        raise ModelFileError(f"{path}: cannot load this {fmt} file ({type(e).__name__}: {first})") from None


ModelSource = str | Path | ModelSpec  # a visionzoo file, or a model name with weights from anywhere


def load_module(source: ModelSource, raw_weights: bool = False) -> tuple[nn.Module, ModelInfo]:
    """An eager nn.Module (with its info) from a visionzoo checkpoint or safetensors file, or a ModelSpec; a
    checkpoint with EMA weights gives those unless raw_weights."""
    if isinstance(source, ModelSpec):
        with _load_errors(Path(source.label), "weights"):
            return module_from_spec(source)
    path = Path(source)
    fmt = detect_format(path)
    if fmt in ("checkpoint", "safetensors"):
        with _load_errors(path, fmt):
            return _read_checkpoint(path, raw_weights) if fmt == "checkpoint" else _read_safetensors(path)
    raise ModelFileError(f"{path}: a {fmt} file holds no trainable model; give a checkpoint (.pth) or .safetensors")


def _load_exported(path: Path, device: torch.device) -> tuple[nn.Module, ModelInfo]:
    checked = check_and_read_pt2(path)  # torch reads these checked bytes, not the file again
    extra = {f"{META_KEY}.json": ""}
    with quiet_libraries():  # torchao's import-time deprecation note; torch's traceback for a program it cannot read
        if "quantized_decomposed" in checked.namespaces:
            # int8 programs call the quantized_decomposed ops, which exist once torchao's PT2E is imported
            require("torchao.quantization.pt2e.quantize_pt2e", "quantize", "an int8 .pt2 program")
        ep = torch.export.load(io.BytesIO(checked.data), extra_files=extra)
    if not extra[f"{META_KEY}.json"]:
        raise ModelFileError(f"{path}: no visionzoo metadata (was it written by `visionzoo export`?)")
    return ep.module().to(device), ModelInfo.from_json(extra[f"{META_KEY}.json"], path)


def _load_torchscript(path: Path, device: torch.device) -> tuple[Any, ModelInfo]:
    extra = {f"{META_KEY}.json": ""}
    with quiet_libraries():  # torch.jit is deprecated upstream; it is still the seed's "jit" mode
        module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
        if not extra[f"{META_KEY}.json"]:
            raise ModelFileError(f"{path}: no visionzoo metadata (was it written by `visionzoo export`?)")
        # fused mode: fold BN into conv, inline constants, pick inference kernels
        module = torch.jit.optimize_for_inference(torch.jit.freeze(module.eval()))
    meta = extra[f"{META_KEY}.json"]
    return module, ModelInfo.from_json(meta.decode() if isinstance(meta, bytes) else meta, path)


def onnx_info(path: str | Path) -> ModelInfo:
    onnx = require("onnx", "export", "reading an ONNX file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf's DecodeError and friends
        raise ModelFileError(f"{path}: not an ONNX file ({type(e).__name__})") from None
    meta = {p.key: p.value for p in model.metadata_props}
    if META_KEY not in meta:
        raise ModelFileError(f"{path}: no visionzoo metadata (was it written by `visionzoo export`?)")
    return ModelInfo.from_json(meta[META_KEY], path)


class _Compiled:
    """torch.compile of a module, compiling with the libraries quieted: inductor says "No CUDA runtime is found"
    on its first compile on a CPU machine with a CUDA toolkit, and its int8 lowering warns about a tensor copy.
    It compiles on a call with a shape it has not seen (dynamo's guards are on shapes), so only those calls
    enter the quiet scope (~20 us), not every batch of a benchmark.

    frozen: inductor's freezing on for every call (and so for every recompile). int8 PT2E graphs need it to
    constant-fold and prepack int8 weights into oneDNN kernels; torchao's x86 passes read the global flag,
    so options={"freezing": True} is not enough.
    """

    def __init__(self, module: nn.Module, frozen: bool = False):
        self.compiled = torch.compile(module)
        self.frozen = frozen
        self.shapes: set[tuple[Any, ...]] = set()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        import torch._inductor.config as inductor_config

        key = (tuple(x.shape), x.dtype, x.device, x.is_contiguous())
        with inductor_config.patch(freezing=True) if self.frozen else contextlib.nullcontext():
            if key in self.shapes:
                return self.compiled(x)
            with quiet_libraries():
                out = self.compiled(x)
            self.shapes.add(key)
            return out


def compile_module(module: nn.Module, quantized: bool = False) -> _Compiled:
    if quantized:
        # registers torchao's x86 inductor passes that lower q/dq patterns to oneDNN int8 kernels;
        # without them inductor compiles the reference fp32 q/dq graph
        with quiet_libraries():  # torchao's import-time deprecation note
            require("torchao.quantization.pt2e.quantizer.x86_inductor_quantizer", "quantize",
                    "an int8 .pt2 program")
    return _Compiled(module, frozen=quantized)


def load_runner(
    source: ModelSource,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    backend: str = "eager",
    channels_last: bool = False,
    raw_weights: bool = False,
) -> Runner:
    """Load any visionzoo model file, or a model name with its weights (ModelSpec), for inference on `device`.

    backend: eager (as stored) or compile (torch.compile; checkpoints and .pt2 only).
    precision: fp16/bf16 run under autocast; ONNX, TorchScript and quantised files run in the precision they
    hold (fp32, or int8 for a quantised file); auto picks for the device (core.precision).
    """
    device = resolve_device(device)
    path = Path(source.label if isinstance(source, ModelSpec) else source)
    fmt = "weights" if isinstance(source, ModelSpec) else detect_format(path)
    asked = parse_precision(precision)
    if fmt in ("onnx", "torchscript") and asked not in ("auto", "fp32", "int8"):  # int8: a quantised file
        raise ConfigError(f"--precision {asked}: {path} is a {fmt} file, which runs in the precision it was "
                          "exported in; drop --precision")
    if fmt in ("onnx", "torchscript") and backend != "eager":
        raise ModelFileError(f"{path}: backend {backend!r} needs a checkpoint or .pt2 file, not {fmt}")
    module: nn.Module | None = None
    with _load_errors(path, fmt):
        if fmt == "onnx":
            info = onnx_info(path)
            fn: Any = OrtModule(path, device)
        elif fmt == "torchscript":
            fn, info = _load_torchscript(path, device)
        elif fmt == "export":
            fn, info = _load_exported(path, device)
        else:
            module, info = load_module(source, raw_weights)
    if module is not None:
        module = module.eval().to(device)
        if channels_last:
            module = module.to(memory_format=torch.channels_last)
        fn = module
    precision = _runtime_precision(asked, fmt, info, device, path)
    if backend == "compile":
        fn = compile_module(fn, quantized=bool(info.quantized))
    elif backend != "eager":
        raise ModelFileError(f"load_runner: unknown backend {backend!r} (eager or compile)")
    return Runner(fn, info, device, fmt, backend, precision, channels_last and fmt != "onnx", module)


def _runtime_precision(asked: str, fmt: str, info: ModelInfo, device: torch.device, path: Path) -> str:
    """The precision a loaded file runs in: auto resolved for the device, files that hold their precision kept."""
    if asked == "auto":
        return "fp32" if fmt in ("onnx", "torchscript") or info.quantized else resolve_precision(asked, device)
    if info.quantized and asked not in ("fp32", info.quantized):
        raise ModelFileError(f"{path}: an {info.quantized} model cannot also run in {asked}")
    if asked == "int8" and not info.quantized:
        raise ModelFileError(f"{path}: not a quantised model; make an int8 file with `visionzoo quantize`")
    return asked
