"""Inference's names and defaults that the command line also shows: export formats, the ONNX opset, the export
check's tolerances, bench's backends, modes and sizes, how large a confusion matrix comes unasked.

Defined once here and imported by the library modules and by cli/: this module imports nothing (no torch), so
`visionzoo export --help` and `bench --help` stay light while saying what the library does.
"""

from __future__ import annotations

# export formats -> the extension of the file each writes; hub writes a folder (config.json, model.safetensors)
EXPORT_SUFFIXES = {"onnx": ".onnx", "torchscript": ".ts", "export": ".pt2", "safetensors": ".safetensors", "hub": ""}
EXPORT_FORMATS = tuple(EXPORT_SUFFIXES)
DEFAULT_OPSET = 18
# fp32 vs fp32 on another runtime: differences come from kernel order only
DEFAULT_ATOL = DEFAULT_RTOL = 1e-4
EXPORT_BATCH_SIZE = 1  # the fixed batch of an export without a dynamic batch

BENCH_BACKENDS = ("eager", "compile", "torchscript", "onnxruntime", "tensorrt")
BENCH_MODES = ("infer", "train")
BENCH_BATCH_SIZES = (1, 4, 8, 16, 32, 64)
BENCH_WARMUP, BENCH_ITERS = 10, 50

PREDICT_BATCH_SIZE = 32
# the confusion matrix is in an evaluation's result (and `eval --json`) unasked up to this many classes;
# beyond, only when asked: ImageNet's would be a million numbers
CONFUSION_UNASKED_MAX = 100
