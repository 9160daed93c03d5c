"""Throughput and latency by batch size, per backend and precision (the seeds' benchmark mode).

Timing rules: warm-up iterations (which include compilation) are not timed, the input is made
once and already lives on the device, and every timed iteration ends with a device sync, so its
latency is real. images/s = batch * iters / wall time of the timed loop.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import platform
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from ..config import OptimConfig
from ..config.limits import check_batch_memory, check_size
from ..core.extras import require
from ..core.files import save_figure
from ..core.precision import autocast
from ..core.quiet import quiet_libraries
from ..engine.optim import build_optimizer
from ..engine.step import sync
from .defaults import BENCH_BACKENDS, BENCH_BATCH_SIZES, BENCH_ITERS, BENCH_MODES, BENCH_WARMUP
from .model_info import ModelInfo
from .model_spec import ModelSpec
from .runtime import (
    ModelSource,
    OrtModule,
    compile_module,
    detect_format,
    load_module,
    load_runner,
)

log = logging.getLogger("visionzoo")

MODES = BENCH_MODES


class Unavailable(Exception):
    """This backend/precision/mode combination cannot run here; the message says why."""


@dataclass
class BenchRow:
    backend: str
    precision: str
    mode: str
    batch_size: int
    status: str = "ok"  # ok | unavailable: ... | error: ...
    images_per_s: float | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    peak_mem_mb: float | None = None
    best: bool = False


class _RssPeak:
    """Peak resident memory of this process during a block (CPU runs), sampled every 2 ms."""

    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._rss())

    def __enter__(self):
        self.peak = self._rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


@contextlib.contextmanager
def _peak_memory(device: torch.device) -> Iterator[dict[str, float | None]]:
    out: dict[str, float | None] = {"mb": None}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        yield out
        out["mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    elif Path("/proc/self/statm").exists():
        with _RssPeak() as rss:
            yield out
        out["mb"] = rss.peak / 2**20
    else:
        yield out


def time_steps(step: Callable[[], Any], warmup: int, iters: int, device: torch.device) -> dict[str, Any]:
    """Run step warmup times untimed, then iters times timed with a sync after each."""
    for _ in range(warmup):
        step()
    sync(device)
    times = np.empty(iters)
    with _peak_memory(device) as mem:
        start = time.perf_counter()
        for i in range(iters):
            t = time.perf_counter()
            step()
            sync(device)
            times[i] = time.perf_counter() - t
        total = time.perf_counter() - start
    p50, p90, p99 = np.percentile(times * 1e3, [50, 90, 99]).tolist()
    return {"total_s": total, "p50_ms": p50, "p90_ms": p90, "p99_ms": p99, "peak_mem_mb": mem["mb"]}


@dataclass
class BenchModel:
    """What bench runs: an eager module when there is one, else a loaded file, plus its info."""

    info: ModelInfo
    module: nn.Module | None = None
    path: Path | None = None
    fmt: str = "checkpoint"

    @property
    def file(self) -> Path:
        """The model file (a model built by name has none; the backends that need one check fmt first)."""
        assert self.path is not None, f"a {self.fmt} bench model without a file"
        return self.path


def bench_model(source: ModelSource, raw_weights: bool = False) -> BenchModel:
    """The model to bench: a name with random weights (as timm's benchmark.py) or with weights from a file or
    the hub (ModelSpec), or a checkpoint/exported file."""
    if isinstance(source, ModelSpec):
        module, info = load_module(source)
        return BenchModel(info, module, None, "weights")
    fmt = detect_format(source)
    if fmt in ("checkpoint", "safetensors"):
        module, info = load_module(source, raw_weights)
        return BenchModel(info, module.eval(), Path(source), fmt)
    return BenchModel(load_runner(source).info, None, Path(source), fmt)


def _int8_program(bm: BenchModel, img_size: int) -> nn.Module:
    """PT2E int8 of the eager module, calibrated on random pixels: for speed only, not accuracy."""
    from .quantize import quantize_pt2e

    assert bm.module is not None, "int8 programs are made from an eager module"
    g = torch.Generator().manual_seed(0)
    return quantize_pt2e(bm.module, [torch.randn(4, 3, img_size, img_size, generator=g) for _ in range(4)]).module()


def _onnx_file(bm: BenchModel, img_size: int, dtype: str | None, workdir: Path) -> Path:
    """An ONNX file of the model (dynamic batch), quantised to int8 with ORT if asked."""
    from .export import _write
    from .quantize import quantize_onnx

    if bm.fmt == "onnx":
        return bm.file  # as stored (an int8 request on an fp32 file was refused earlier)
    if bm.module is None:
        raise Unavailable(f"a {bm.fmt} file cannot be converted to ONNX here; export the checkpoint instead")
    path = workdir / "model.onnx"
    _write(copy.deepcopy(bm.module).cpu(), bm.info, "onnx", path, torch.randn(2, 3, img_size, img_size), True, 18)
    if dtype == "int8":
        g = torch.Generator().manual_seed(0)
        q = workdir / "model_int8.onnx"
        quantize_onnx(path, q, [torch.randn(4, 3, img_size, img_size, generator=g) for _ in range(4)], "int8", bm.info)
        return q
    return path


@dataclass
class BenchTarget:
    """One backend/precision group to build forward callables for."""

    bm: BenchModel
    backend: str
    precision: str
    device: torch.device
    img_size: int
    channels_last: bool
    workdir: Path
    grad_checkpointing: bool = False  # train mode: activations recomputed in the backward pass


Factory = Callable[[int], Callable[[torch.Tensor], Any]]  # batch size -> forward callable


def _forward_factory(t: BenchTarget) -> Factory:
    """For one backend/precision: a function batch_size -> forward callable (built fresh per size)."""
    bm, precision = t.bm, t.precision
    quantized_file = bm.info.quantized
    if quantized_file and precision != quantized_file:
        raise Unavailable(f"the file is {quantized_file}; bench it with --precision {quantized_file}")
    if precision == "int8" and not quantized_file and bm.module is None:
        raise Unavailable(f"the {bm.fmt} file is not quantised; make an int8 file with `visionzoo quantize`")
    if bm.fmt == "onnx" and t.backend != "onnxruntime":
        raise Unavailable("an ONNX file runs on the onnxruntime backend")
    if bm.fmt == "torchscript" and t.backend != "torchscript":
        raise Unavailable("a TorchScript file runs on the torchscript backend")
    builder = FORWARD_BUILDERS.get(t.backend)
    if builder is None:
        raise Unavailable(f"unknown backend {t.backend!r}")
    return builder(t)


def _torch_module(t: BenchTarget) -> nn.Module:
    """The module eager and compile run: a copy (moving or re-laying out must not leak into the next group),
    PT2E int8 for int8, or the loaded .pt2 program."""
    bm = t.bm
    if bm.module is None and bm.fmt != "export":
        raise Unavailable(f"needs a checkpoint or .pt2, not a {bm.fmt} file")
    if bm.module is not None:
        module = _int8_program(bm, t.img_size) if t.precision == "int8" else copy.deepcopy(bm.module)
    else:
        module = load_runner(bm.file).fn
    module = module.to(t.device)
    if t.channels_last and t.precision != "int8":
        module = module.to(memory_format=torch.channels_last)
    return module


def _eager(t: BenchTarget) -> Factory:
    if t.precision == "int8":
        raise Unavailable("PT2E int8 runs its int8 kernels through inductor: use --backend compile")
    module = _torch_module(t)
    return lambda bs: module


def _compiled(t: BenchTarget) -> Factory:
    module = _torch_module(t)

    def compiled(bs: int):
        torch._dynamo.reset()  # static shapes per batch size, as a fixed-batch deployment would use
        return compile_module(module, quantized=t.precision == "int8")

    return compiled


def _torchscript(t: BenchTarget) -> Factory:
    bm = t.bm
    if t.precision != "fp32":
        raise Unavailable("TorchScript runs fp32 here (trace under autocast is not supported)")
    if bm.fmt == "torchscript":
        fn = load_runner(bm.file, t.device).fn
        return lambda bs: fn
    if bm.module is None:
        raise Unavailable(f"needs a checkpoint or TorchScript file, not a {bm.fmt} file")
    module = copy.deepcopy(bm.module).to(t.device)

    def scripted(bs: int):
        example = torch.randn(bs, 3, t.img_size, t.img_size, device=t.device)
        with torch.no_grad(), quiet_libraries():  # torch.jit deprecation notices
            traced = torch.jit.trace(module, example, check_trace=False)
            return torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))

    return scripted


def _onnxruntime(t: BenchTarget) -> Factory:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise Unavailable("onnxruntime is not installed (pip install 'visionzoo[export]')") from None
    if t.precision not in ("fp32", "int8"):
        raise Unavailable(f"onnxruntime runs fp32 or int8 files; {t.precision} needs a converted ONNX file")
    session = OrtModule(_onnx_file(t.bm, t.img_size, t.precision, t.workdir), t.device)
    fixed = session.input_shape[0] if isinstance(session.input_shape[0], int) else None

    def ort(bs: int):
        if fixed and bs != fixed:  # it would run in chunks: not a batch-size measurement
            raise Unavailable(f"the ONNX file has a fixed batch size of {fixed}")
        return session

    return ort


def _tensorrt(t: BenchTarget) -> Factory:
    if t.device.type != "cuda":
        raise Unavailable("TensorRT needs a CUDA device")
    try:
        import torch_tensorrt
    except ImportError:
        raise Unavailable("torch_tensorrt is not installed") from None
    if t.bm.module is None or t.precision == "int8":
        raise Unavailable("TensorRT here builds from a checkpoint in fp32/fp16/bf16")
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[t.precision]
    module = copy.deepcopy(t.bm.module).to(t.device)

    def trt(bs: int):
        example = torch.randn(bs, 3, t.img_size, t.img_size, device=t.device)
        return torch_tensorrt.compile(module, ir="dynamo", inputs=[example], enabled_precisions={dtype})

    return trt


# one builder per backend: what `--backend` accepts
FORWARD_BUILDERS: dict[str, Callable[[BenchTarget], Factory]] = {
    "eager": _eager, "compile": _compiled, "torchscript": _torchscript, "onnxruntime": _onnxruntime,
    "tensorrt": _tensorrt,
}
BACKENDS = BENCH_BACKENDS  # what `--backend` accepts, FORWARD_BUILDERS' keys (a test keeps them equal)


def _train_step_factory(t: BenchTarget) -> Factory:
    bm, device = t.bm, t.device
    if t.backend not in ("eager", "compile") or t.precision == "int8" or bm.module is None:
        raise Unavailable("train mode runs eager or compile in fp32/fp16/bf16 from a checkpoint or model name")
    module = copy.deepcopy(bm.module).to(device).train()
    if t.grad_checkpointing:
        if not hasattr(module, "set_grad_checkpointing"):
            raise Unavailable(f"{bm.info.model_name} has no gradient checkpointing (timm models have)")
        cast(Any, module).set_grad_checkpointing(True)
    if t.channels_last:
        module = module.to(memory_format=torch.channels_last)
    model = torch.compile(module) if t.backend == "compile" else module
    # the optimizer `visionzoo train` builds (fused SGD with momentum and weight decay), so the rate is train's
    opt = build_optimizer(module, OptimConfig(), 1e-4, device)
    scaler = torch.amp.GradScaler(device.type, enabled=t.precision == "fp16" and device.type == "cuda")

    def make(bs: int):
        target = torch.randint(0, bm.info.num_classes, (bs,), device=device)

        def step(x: torch.Tensor) -> None:
            opt.zero_grad(set_to_none=True)
            with autocast(device, t.precision):
                loss = nn.functional.cross_entropy(model(x), target)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()

        return step

    return make


def bench(
    bm: BenchModel,
    backends: tuple[str, ...] = ("eager",),
    precisions: tuple[str, ...] = ("fp32",),
    batch_sizes: tuple[int, ...] = BENCH_BATCH_SIZES,
    img_size: int | None = None,
    mode: str = "infer",
    warmup: int = BENCH_WARMUP,
    iters: int = BENCH_ITERS,
    device: torch.device | None = None,
    channels_last: bool = False,
    on_row: Callable[[BenchRow], None] | None = None,
    grad_checkpointing: bool = False,
) -> list[BenchRow]:
    """One row per (backend, precision, batch size); the fastest batch size of each group is marked best."""
    size = img_size or bm.info.img_size
    check_size(size)
    check_batch_memory(max(batch_sizes), size, "--batch-sizes and --img-size")  # before the first allocation
    rows: list[BenchRow] = []
    with tempfile.TemporaryDirectory(prefix="visionzoo-bench-") as tmp:
        for backend in backends:
            for precision in precisions:
                target = BenchTarget(bm, backend, precision, device or torch.device("cpu"), size, channels_last,
                                     Path(tmp), grad_checkpointing)
                rows.extend(_bench_group(target, mode, batch_sizes, warmup, iters, on_row))
    return rows


def _error_text(e: BaseException) -> str:
    return f"error: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"


def _build_factory(t: BenchTarget, mode: str) -> tuple[Factory | None, str]:
    """The group's factory, or None and the reason it cannot run (reported in every row of the group)."""
    try:
        return (_train_step_factory(t) if mode == "train" else _forward_factory(t)), "ok"
    except Unavailable as e:
        return None, f"unavailable: {e}"
    except ImportError as e:
        return None, f"unavailable: {e.name or e} is not installed"
    except Exception as e:  # export or quantisation failed: report it, go on with the rest
        return None, _error_text(e)


def _bench_group(t: BenchTarget, mode: str, batch_sizes: tuple[int, ...], warmup: int, iters: int,
                 on_row: Callable[[BenchRow], None] | None) -> list[BenchRow]:
    factory, status = _build_factory(t, mode)
    # compilation happens in the first call: never let it into the timed loop
    warmup = max(warmup, 1) if t.backend in ("compile", "torchscript", "tensorrt") else warmup
    group: list[BenchRow] = []
    for bs in batch_sizes:
        row = BenchRow(t.backend, t.precision, mode, bs, status=status)
        if factory is not None:
            try:
                _run_row(row, factory, t, bs, mode, warmup, iters)
            except Unavailable as e:
                row.status = f"unavailable: {e}"
            except Exception as e:  # OOM, a runtime's own errors: this row only
                row.status = _error_text(e)
                if t.device.type == "cuda":
                    torch.cuda.empty_cache()
        group.append(row)
        if on_row:
            on_row(row)
    ok = [r for r in group if r.images_per_s]
    if ok:
        max(ok, key=lambda r: r.images_per_s or 0.0).best = True
    return group


def _run_row(row: BenchRow, factory: Factory, t: BenchTarget, bs: int, mode: str, warmup: int, iters: int) -> None:
    device = t.device
    x = torch.randn(bs, 3, t.img_size, t.img_size, device=device)
    if t.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    fn = factory(bs)
    if mode == "train":
        stats = time_steps(lambda: fn(x), warmup, iters, device)
    else:

        def step():
            with autocast(device, t.precision):  # int8 and fp32 run as they are
                return fn(x)

        with torch.inference_mode():
            stats = time_steps(step, warmup, iters, device)
    row.images_per_s = bs * iters / stats["total_s"]
    row.p50_ms, row.p90_ms, row.p99_ms = stats["p50_ms"], stats["p90_ms"], stats["p99_ms"]
    row.peak_mem_mb = stats["peak_mem_mb"]


def environment(device: torch.device) -> dict[str, Any]:
    env: dict[str, Any] = {"torch": torch.__version__, "python": platform.python_version(),
                           "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                           "device": str(device)}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    with contextlib.suppress(ImportError):
        import onnxruntime

        env["onnxruntime"] = onnxruntime.__version__
    return env


def rows_as_dicts(rows: list[BenchRow]) -> list[dict[str, Any]]:
    return [asdict(r) for r in rows]


def plot(rows: list[BenchRow], path: str | Path, title: str) -> None:
    """Throughput and p50 latency (p90-p99 as error bars) against batch size, one line per group."""
    matplotlib = require("matplotlib", "plots", "the bench plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    groups: dict[tuple[str, str], list[BenchRow]] = {}
    for r in rows:
        if r.images_per_s:
            groups.setdefault((r.backend, r.precision), []).append(r)
    for (backend, precision), g in groups.items():
        bs = [r.batch_size for r in g]
        line = ax1.plot(bs, [r.images_per_s for r in g], marker="o", label=f"{backend} {precision}")[0]
        for r in g:
            if r.best:
                ax1.plot(r.batch_size, r.images_per_s, marker="*", markersize=14, color=line.get_color())
        p50 = np.array([r.p50_ms for r in g])
        err = [np.zeros_like(p50), np.array([r.p99_ms for r in g]) - p50]
        ax2.errorbar(bs, p50, yerr=err, marker="o", capsize=3, label=f"{backend} {precision}", color=line.get_color())
    measured = sorted({r.batch_size for g in groups.values() for r in g})
    for ax, ylabel in ((ax1, "images/s (★ best batch)"), (ax2, "latency p50 ms (bar to p99)")):
        ax.set_xscale("log", base=2)
        # ticks at the measured batch sizes, written as numbers (not 2^k), and no minor ticks between them
        ax.set_xticks(measured, [str(b) for b in measured])
        ax.minorticks_off()
        ax.set_xlabel("batch size")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
    ax1.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
