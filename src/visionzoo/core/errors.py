"""User-facing errors: one base class, one subclass per kind.

The CLI catches `VisionZooError` and prints its message as one line; the message names the file or
the flag at fault. `exit_code` is 2 for usage errors (the command line or a config file is wrong as
written, like argparse's own errors) and 1 for failures (the files read or the machine made a
well-formed command fail). The second bases keep `except ValueError` / `except RuntimeError` in
callers from before this hierarchy working.
"""

from __future__ import annotations


def plural(count: int, noun: str, plural_form: str | None = None) -> str:
    """"1 step", "3 steps", "0 images": a count with its noun, for the messages these errors and logs carry."""
    return f"{count} {noun if count == 1 else plural_form or noun + 's'}"


class VisionZooError(Exception):
    """Something the user can fix; the message says what and where, in one line."""

    exit_code = 1


class ConfigError(VisionZooError, ValueError):
    """A config key, flag or value is invalid or conflicts with another; the message names it."""

    exit_code = 2


class DataError(VisionZooError, ValueError):
    """A data set is missing or malformed; the message names the file or folder."""


class BadImageError(VisionZooError, RuntimeError):
    """An image file could not be read or decoded; the message starts with its path."""


class SkippedImages(int):
    """A count of unreadable images that were skipped, carrying their names (file paths).

    An int, so code that sums skip counts (the loader's collate function) keeps working unchanged, and a
    sum of them keeps the names: `0 + a + b` is a SkippedImages with a's and b's names (int's addition
    defers to a subclass's reflected method). Pickled whole, so it crosses from loader workers.
    """

    names: tuple[str, ...]

    def __new__(cls, count: int, names: tuple[str, ...] | list[str] = ()) -> SkippedImages:
        self = super().__new__(cls, count)
        self.names = tuple(names)
        return self

    def __add__(self, other: object) -> SkippedImages:
        if not isinstance(other, int):
            return NotImplemented
        return SkippedImages(int(self) + int(other), self.names + getattr(other, "names", ()))

    def __radd__(self, other: object) -> SkippedImages:
        if not isinstance(other, int):
            return NotImplemented
        return SkippedImages(int(other) + int(self), getattr(other, "names", ()) + self.names)

    def __reduce__(self) -> tuple[type, tuple[int, tuple[str, ...]]]:
        return SkippedImages, (int(self), self.names)


def skipped_names(count: object) -> tuple[str, ...]:
    """The names a skip count carries (none for a plain int)."""
    return getattr(count, "names", ())


def error_message(e: BaseException) -> str:
    """An error's own message: one raised in a DataLoader worker comes back with the worker's traceback in
    front ("Caught BadImageError in DataLoader worker process 0. Original Traceback ..."), and its last line,
    less the exception's name, is the message."""
    text = str(e).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1].strip()
        name = f"{type(e).__name__}: "
        return last[last.index(name) + len(name):] if name in last else last
    return text


class DivergedError(VisionZooError, RuntimeError):
    """The training loss turned NaN or infinite: the run failed (exit status 1); the message says which
    settings to change."""


class ModelFileError(VisionZooError, RuntimeError):
    """A model, weights or checkpoint file cannot be used as asked; the message names the file."""


class Interrupted(VisionZooError, KeyboardInterrupt):
    """Ctrl-C (SIGINT) stopped a run; the message says what was kept and how to resume. Still a
    KeyboardInterrupt, so a caller's `except KeyboardInterrupt` sees it; exit status 130 (128 + SIGINT), as a
    shell reports a command stopped by Ctrl-C."""

    exit_code = 130

    def __init__(self, message: str, output: str | None = None):
        super().__init__(message)
        self.output = output  # the run folder, where one was made
