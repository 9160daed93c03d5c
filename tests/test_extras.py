"""What a user reads: a missing optional package names the extra that installs it; an undecodable image
names its file, never an object repr; quantisation keeps the libraries' internal notes out of the output."""

from __future__ import annotations

import io
import logging
import re
import sys
import warnings

import pytest
import torch

from visionzoo.cli import main
from visionzoo.core.errors import BadImageError, VisionZooError
from visionzoo.core.extras import EXTRAS, MissingExtraError, require

REPR = re.compile(r"object at 0x[0-9a-f]+")


def missing(monkeypatch, *modules: str) -> None:
    """Make `import name` fail as if the package were not installed (None in sys.modules blocks it)."""
    for name in modules:
        for loaded in [m for m in sys.modules if m == name or m.startswith(f"{name}.")]:
            monkeypatch.delitem(sys.modules, loaded)
        monkeypatch.setitem(sys.modules, name, None)


def test_require_names_the_extra(monkeypatch):
    missing(monkeypatch, "onnx")
    with pytest.raises(MissingExtraError) as e:
        require("onnx", "export", "ONNX export")
    assert str(e.value) == "ONNX export needs onnx: pip install 'visionzoo[export]'"
    assert isinstance(e.value, VisionZooError) and isinstance(e.value, ImportError)


def test_require_returns_an_installed_module():
    assert require("json", "plots", "x") is sys.modules["json"]


def test_a_broken_package_is_not_called_missing(tmp_path, monkeypatch):
    # the package is there but one of its own imports fails: that error, not "pip install the extra"
    (tmp_path / "vz_broken_pkg.py").write_text("import vz_no_such_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="vz_no_such_dependency"):
        require("vz_broken_pkg", "export", "x")


def test_extras_table_matches_pyproject():
    import tomllib
    from pathlib import Path

    declared = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    extras = declared["optional-dependencies"]
    base = " ".join(declared["dependencies"])
    for extra, packages in EXTRAS.items():
        listed = {re.split(r"[<>=\[ ]", p)[0] for p in extras[extra]}
        assert listed == set(packages), extra
        assert not any(re.search(rf"\b{p}\b", base) for p in packages)  # optional, not in the base install
    # the test extra installs every optional package, so the tests never skip for want of one
    assert "visionzoo[all]" in extras["test"]
    assert set(EXTRAS) | {"tensorboard"} <= set(re.findall(r"\w+", extras["all"][0].split("[")[1]))


def test_eval_of_an_onnx_file_without_onnx_names_the_extra(monkeypatch, tmp_path, capsys):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"not read: the import fails first")
    missing(monkeypatch, "onnx", "onnxruntime")
    assert main(["eval", "--checkpoint", str(model), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'visionzoo[export]'" in err


def test_confusion_without_matplotlib_fails_before_evaluating(monkeypatch, tmp_path, capsys):
    ckpt = tmp_path / "m.pth"
    ckpt.write_bytes(b"never loaded: the check comes first")
    missing(monkeypatch, "matplotlib")
    assert main(["eval", "--checkpoint", str(ckpt), "--confusion", str(tmp_path / "cm")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.endswith("--confusion needs matplotlib: pip install 'visionzoo[plots]'")
    assert len(err.splitlines()) == 1


def test_quantize_without_torchao_names_the_extra(monkeypatch):
    from visionzoo.inference.quantize import quantize_pt2e

    missing(monkeypatch, "torchao")
    with pytest.raises(MissingExtraError, match=r"needs torchao: pip install 'visionzoo\[quantize\]'$"):
        quantize_pt2e(torch.nn.Linear(2, 2), [torch.zeros(2, 2)])


def test_bench_plot_without_matplotlib_names_the_extra(monkeypatch, tmp_path):
    from visionzoo.inference.model_bench import plot

    missing(monkeypatch, "matplotlib")
    with pytest.raises(MissingExtraError, match=r"visionzoo\[plots\]"):
        plot([], tmp_path / "b.png", "t")


def test_undecodable_image_names_its_file_not_a_stream(tmp_path):
    from visionzoo.data.images import EncodedFile, open_image, read_file

    bad = tmp_path / "cat.jpg"
    bad.write_bytes(b"this is not an image")
    for load in (lambda: read_file(bad).open(), lambda: open_image(bad),
                 lambda: EncodedFile(io.BytesIO(bad.read_bytes()).read(), str(bad)).open()):
        with pytest.raises(BadImageError) as e:
            load()
        message = str(e.value)
        assert message.startswith(f"{bad}: cannot decode image")
        assert not REPR.search(message) and "BytesIO" not in message
        assert message.count(str(bad)) == 1  # the path once, not again inside Pillow's own words


def test_quiet_libraries_hides_library_notes_only(caplog):
    from visionzoo.inference.quantize import quiet_libraries

    torch_level = logging.getLogger("torch").level
    caplog.set_level(logging.INFO, logger="visionzoo")
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        with pytest.raises(RuntimeError, match="real failure"), quiet_libraries():
            warnings.warn("`torch.jit.trace` is deprecated. Please switch to `torch.compile` or `torch.export`.",
                          FutureWarning, stacklevel=1)  # a known library note (core.quiet.WARNING_NOTES)
            logging.getLogger("torch.utils.cpp_extension").warning("No CUDA runtime is found")
            logging.getLogger("torch._inductor").error("a real library error")
            logging.getLogger("visionzoo").info("visionzoo's own line")
            raise RuntimeError("real failure")
    messages = [r.getMessage() for r in caplog.records]
    assert "No CUDA runtime is found" not in messages
    assert "a real library error" in messages and "visionzoo's own line" in messages
    assert not said  # the warning was dropped inside the scope
    assert logging.getLogger("torch").level == torch_level  # and everything is as it was after it
    with warnings.catch_warnings(record=True) as after:
        warnings.simplefilter("always")
        warnings.warn("outside", UserWarning, stacklevel=1)
    assert len(after) == 1
