"""Test-resolution sweep: one or more model files evaluated at several test sizes (`eval --sizes`).

Each size uses the file's own crop ratio (Resize(size / crop_pct) then CenterCrop(size), 256:224 for
FixRes), so only the resolution changes. The plot draws top-1 against test size, one line per file,
which is how the FixRes effect (the best test size lies above the train size) shows.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..config import DataConfig
from ..core.distributed import init_distributed
from ..core.errors import ConfigError
from ..core.files import save_figure
from ..inference.eval_data import resolve_data
from ..inference.evaluate import evaluate_runner
from ..inference.model_spec import source_label
from ..inference.runtime import ModelSource, load_runner


def evaluate_sizes(model_paths: list[ModelSource], sizes: list[int], data: DataConfig | None = None,
                   batch_size: int = 128, device: str = "auto", precision: str = "fp32",
                   progress: bool = True, backend: str = "eager", channels_last: bool = False) -> dict[str, Any]:
    """Top-1/top-5 of every model file at every test size, on the same validation split.

    Returns {"sizes": [...], "models": [{"checkpoint", "model", "stored_size", "crop_pct", "fixres_finetuned",
    "top1": [...], "top5": [...], "best_size", "best_top1"}]}. stored_size is the size the file was trained
    (or FixRes fine-tuned) at, which eval uses by default.
    """
    if not sizes or any(s < 1 for s in sizes):
        raise ConfigError(f"--sizes needs positive sizes, got {sizes}")
    dist = init_distributed(device)
    models = []
    for path in model_paths:
        runner = load_runner(path, dist.device, precision, backend, channels_last)
        if runner.fmt not in ("checkpoint", "safetensors", "weights") and set(sizes) != {runner.info.img_size}:
            raise ConfigError(f"{path}: an exported {runner.fmt} file has a fixed input size "
                              f"({runner.info.img_size} px); sweep the checkpoint it came from")
        base = resolve_data(runner.info, data, path)  # relative data paths: where training ran
        label = source_label(path)
        row: dict[str, Any] = {"checkpoint": label, "model": runner.info.model_name,
                               "stored_size": runner.info.img_size, "crop_pct": runner.info.crop_pct,
                               "fixres_finetuned": runner.info.extra.get("train_scope") == "fixres",
                               "top1": [], "top5": [], "num_images": None}
        for size in sizes:
            r, _ = evaluate_runner(runner, dataclasses.replace(base, img_size=size), dist, "val", batch_size,
                                   progress, channels_last, f"{Path(label).name} @ {size}px")
            row["top1"].append(r["top1"])
            row["top5"].append(r["top5"])
            row["num_images"] = r["num_images"]
        best = max(range(len(sizes)), key=lambda i: row["top1"][i])
        row.update(best_size=sizes[best], best_top1=row["top1"][best])
        models.append(row)
    return {"sizes": list(sizes), "models": models}


def sizes_table(result: dict[str, Any]) -> str:
    """A plain-text table: one row per test size, one top-1 column per model file; best marked *."""
    names = [_label(m) for m in result["models"]]
    width = max([len(n) for n in names] + [12])
    lines = ["test size  " + "  ".join(n.rjust(width) for n in names)]
    for i, size in enumerate(result["sizes"]):
        cells = []
        for m in result["models"]:
            mark = "*" if m["best_size"] == size else " "
            cells.append(f"{m['top1'][i]:.2f}{mark}".rjust(width))
        lines.append(f"{size:>9}  " + "  ".join(cells))
    return "\n".join(lines)


def _label(m: dict[str, Any]) -> str:
    how = "fine-tuned" if m.get("fixres_finetuned") else "trained"
    p = Path(m["checkpoint"])
    name = f"{p.parent.name}/{p.name}" if p.parent.name else p.name
    return f"{name} ({how} at {m['stored_size']})"


def plot_sizes(result: dict[str, Any], path: str | Path, title: str | None = None) -> None:
    """Top-1 against test size, one line per model file; its train size and best size marked."""
    from ..core.extras import require

    require("matplotlib", "plots", "the size sweep plot").use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    sizes = result["sizes"]
    for m in result["models"]:
        (line,) = ax.plot(sizes, m["top1"], marker="o", label=_label(m))
        ax.plot([m["best_size"]], [m["best_top1"]], marker="*", markersize=14, color=line.get_color())
        ax.axvline(m["stored_size"], color=line.get_color(), linestyle=":", linewidth=1)
    ax.set_xlabel("test size (px)")
    ax.set_ylabel("top-1 (%)")
    ax.set_xticks(sizes)
    ax.set_title(title or "top-1 against test resolution (star: best; dotted: size it trained at)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
