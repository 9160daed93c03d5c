"""The libraries visionzoo drives, quieted: the one place that knows which of their warnings and log records are
notes about their own internals, not news for the user.

`quiet_libraries()` hides exactly the notes listed here (each matched by logger or warning category and the
start of its text); every other warning, log record and exception still comes through. A note visionzoo has
answered (a deprecation of the seed's TorchScript mode, a retry visionzoo makes) is listed with the reason.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import warnings
from collections.abc import Iterator

# (logger, message start): records about the libraries' internals
LOG_NOTES: tuple[tuple[str, str], ...] = (
    # torchao registers its KernelPreference enum with torch's pytree when imported; torch 2.14 deprecates that
    ("torch.utils._pytree", r"<enum '\w+'> is an Enum subclass and is now natively supported"),
    # inductor's first compile looks for a CUDA toolkit; on a CPU machine with one installed it says so
    ("torch.utils.cpp_extension", r"No CUDA runtime is found"),
    # torch.export.load logs (with a traceback) any program it cannot read, before returning nothing for it
    ("torch.export", r"Ran into the following error when deserializing"),
)
# (category, message start, module that warns): warnings about the libraries' own code
WARNING_NOTES: tuple[tuple[type[Warning], str, str], ...] = (
    # TorchScript is deprecated upstream; it is still the seed's "jit" mode (export, load, bench)
    (FutureWarning, r"`torch\.jit\.\w+` is (deprecated|not supported)", ""),
    # ONNX opsets below 18 (the seed's ATC wants 11) only come from the TorchScript-based exporter
    (DeprecationWarning, r"You are using the legacy TorchScript-based ONNX export", ""),
    (DeprecationWarning, r"The feature will be removed\. Please remove usage of this function", r"torch\.onnx\."),
    # inductor's int8 lowering copies its own zero-point tensor in the way torch.tensor warns about
    (UserWarning, r"To copy construct from a tensor, it is recommended", r"torch\._inductor\."),
)
# loggers that report every optimisation pass at INFO: their warnings and errors still show
CHATTY_LOGGERS = ("onnxscript", "torch.onnx", "onnx_ir")
# onnxruntime's C++ logger writes to stderr itself, past Python's logging: its severity while quiet
# (3: errors only) and its default, to restore (it has no getter to save the old one)
ORT_QUIET, ORT_DEFAULT = 3, 2


class _KnownNotes(logging.Filter):
    """Drops the LOG_NOTES records of one logger (a logger's filters see the records logged on it)."""

    def __init__(self, patterns: list[re.Pattern[str]]):
        super().__init__()
        self.patterns = patterns

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(p.match(message) for p in self.patterns)


def _patterns() -> dict[str, list[re.Pattern[str]]]:
    by_logger: dict[str, list[re.Pattern[str]]] = {}
    for name, pattern in LOG_NOTES:
        by_logger.setdefault(name, []).append(re.compile(pattern))
    return by_logger


_PATTERNS = _patterns()  # compiled once: a compiled module enters the scope on each new input shape
_depth = 0  # scopes open now: onnxruntime's severity is set by the outermost one and restored when it closes


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """While torch, torchao, ONNX or ONNX Runtime load, export, quantise, compile or run a model: the known notes
    above stay out of the output, and everything is as it was afterwards."""
    global _depth
    filters = {name: _KnownNotes(patterns) for name, patterns in _PATTERNS.items()}  # its own: scopes nest
    raised: dict[str, int] = {}  # only loggers actually changed are set back (setLevel clears every logger's cache)
    with warnings.catch_warnings():
        for category, pattern, module in WARNING_NOTES:
            warnings.filterwarnings("ignore", pattern, category, module)
        for name, f in filters.items():
            logging.getLogger(name).addFilter(f)
        for name in CHATTY_LOGGERS:
            logger = logging.getLogger(name)
            if logger.getEffectiveLevel() < logging.WARNING:
                raised[name] = logger.level
                logger.setLevel(logging.WARNING)
        _depth += 1
        ort_quieted = _depth == 1 and _ort_severity(ORT_QUIET)
        try:
            yield
        finally:
            _depth -= 1
            if ort_quieted:
                _ort_severity(ORT_DEFAULT)
            for name, level in raised.items():
                logging.getLogger(name).setLevel(level)
            for name, f in filters.items():
                logging.getLogger(name).removeFilter(f)


def _ort_severity(level: int) -> bool:
    """onnxruntime's default logger severity, if onnxruntime is loaded (never imported just for this)."""
    ort = sys.modules.get("onnxruntime")
    if ort is not None and hasattr(ort, "set_default_logger_severity"):
        ort.set_default_logger_severity(level)
        return True
    return False


@contextlib.contextmanager
def all_warnings_silenced() -> Iterator[None]:
    """Every warning dropped, for code that turns what would be warned about into its own findings (check-data's
    scan counts Pillow's per-file warnings, palette transparency and big images, as odd images)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
