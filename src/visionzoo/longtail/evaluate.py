"""`visionzoo eval --longtail`: overall, many/medium/few-shot and open-set accuracy of any model file.

The model runs through the one file-level evaluation path (inference.evaluate), sharded under torchrun;
the long-tail metrics are computed from its per-image outputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import DataConfig
from ..core.distributed import init_distributed
from ..core.errors import ConfigError, DataError
from ..core.files import save_figure
from ..data.datasets import ImageDataset, list_samples, read_list_file
from ..data.transforms import eval_transform
from ..inference.eval_data import resolve_data
from ..inference.evaluate import evaluate_dataset, evaluate_runner
from ..inference.model_spec import source_label
from ..inference.runtime import ModelSource, load_runner
from .metrics import (
    FEW,
    MANY,
    class_counts,
    open_set_f_measure,
    shot_accuracy,
    shot_group,
)


def evaluate_longtail(
    model_path: ModelSource,
    train_list: str | Path,
    data: DataConfig | None = None,
    open_list: str | Path | None = None,
    threshold: float = 0.1,
    many: int = MANY,
    few: int = FEW,
    batch_size: int = 128,
    device: str = "auto",
    precision: str = "fp32",
    logit_adjust: float = 0.0,
) -> dict[str, Any]:
    """Top-1 on the known-class split, mean per-class accuracy per shot group, and open-set F-measure.

    Shot groups come from the class sizes of train_list (the training set's list file).
    logit_adjust: tau of post-hoc logit adjustment (Menon et al. 2021): logits - tau * log prior.
    """
    if few > many:
        raise ConfigError(f"--few {few} is above --many {many}")
    dist = init_distributed(device)
    runner = load_runner(model_path, dist.device, precision)
    data = resolve_data(runner.info, data, model_path)  # relative data paths: where training ran
    n_cls = runner.info.num_classes
    train_counts = class_counts([label for _, label in read_list_file(train_list)], n_cls)
    adjust = None
    if logit_adjust:
        prior = torch.tensor(train_counts, dtype=torch.float64).clamp_min(1)
        adjust = (logit_adjust * (prior / prior.sum()).log()).float()
    known, info = evaluate_runner(runner, data, dist, "val", batch_size, progress=False, collect=True,
                                  logit_adjust=adjust)
    pred, conf, labels = (known["outputs"][k] for k in ("pred", "conf", "label"))
    correct = np.bincount(labels[pred == labels], minlength=n_cls)
    total = np.bincount(labels, minlength=n_cls)
    result: dict[str, Any] = {
        "model": info.model_name, "checkpoint": source_label(model_path), "num_images": len(labels),
        "top1": 100.0 * float(np.mean(pred == labels)) if len(labels) else 0.0,
        "mean_class_accuracy": float(np.mean([100.0 * c / t for c, t in zip(correct, total) if t])),
        **shot_accuracy(correct.tolist(), total.tolist(), train_counts, many, few),
        "many_threshold": many, "few_threshold": few, "train_list": str(train_list), "logit_adjust": logit_adjust,
    }
    if open_list:
        root = Path(data.val_root or data.data or Path(open_list).parent)
        samples = list_samples(open_list, root, "val", classes=info.classes, num_classes=n_cls, allow_open=True)
        if any(label != -1 for _, label in samples.items):
            raise DataError(f"{open_list}: open-set lists hold label -1 only")
        tf = eval_transform(info.img_size, info.crop_pct, info.interpolation, data.decode)
        opened = evaluate_dataset(runner, ImageDataset(samples, tf), data, dist, batch_size, collect=True,
                                  logit_adjust=adjust)["outputs"]
        o_pred, o_conf = opened["pred"], opened["conf"]
        result["open_images"] = len(o_pred)
        result["open_set"] = open_set_f_measure(np.concatenate([pred, o_pred]), np.concatenate([conf, o_conf]),
                                                np.concatenate([labels, -np.ones(len(o_pred), dtype=labels.dtype)]),
                                                threshold)
    names = [c["class"] for c in known["per_class"]]
    result["per_class"] = [
        {"class": names[i], "train_images": train_counts[i],
         "group": shot_group(train_counts[i], many, few), "test_images": int(total[i]),
         "top1": 100.0 * correct[i] / total[i] if total[i] else None}
        for i in range(n_cls)
    ]
    return result


def plot_per_class(result: dict[str, Any], path: str | Path) -> None:
    """Per-class accuracy against training-set class size (log scale), coloured by shot group."""
    from ..core.extras import require

    require("matplotlib", "plots", "the per-class plot").use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    colours = {"many": "tab:blue", "medium": "tab:orange", "few": "tab:red"}
    for group, colour in colours.items():
        rows = [r for r in result["per_class"] if r["group"] == group and r["top1"] is not None]
        mean = result.get(f"{group}_shot")
        if not rows:  # no empty legend entries
            continue
        label = f"{group} ({len(rows)} class{'es' if len(rows) != 1 else ''}" + (
            f", mean {mean:.1f}%)" if mean is not None else ")")
        ax.scatter([max(r["train_images"], 1) for r in rows], [r["top1"] for r in rows], s=18, c=colour, label=label)
    for x, name in ((result["few_threshold"], "few | medium"), (result["many_threshold"], "medium | many")):
        ax.axvline(x, color="grey", linestyle=":", linewidth=1)
        ax.annotate(f"{name} ({x})", (x, 1.0), xycoords=("data", "axes fraction"), xytext=(0, 2),
                    textcoords="offset points", ha="center", va="bottom", fontsize=7, color="grey")
    ax.set_xscale("log")
    # plain numbers on the log axis (2, 5, 10, 20, 50, 100, ...), not 10^k
    from matplotlib.ticker import LogLocator, ScalarFormatter

    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(plt.NullFormatter())
    ax.set_xlabel("training images of the class")
    ax.set_ylabel("class top-1 (%)")
    ax.set_ylim(-3, 103)  # the whole percent range, so plots of two runs compare at a glance
    title = f"{result['model']}: top-1 {result['top1']:.1f}%"
    if "open_set" in result:
        title += f", open-set F {result['open_set']['f_measure']:.1f}"
    ax.set_title(title, pad=14)  # room for the threshold labels
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
