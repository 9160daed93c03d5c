"""Temperature scaling (Guo et al., 2017): the one number T > 0 that a classifier's logits are divided by so that
its softmax probabilities say how often it is right, fitted on a labelled split, and the measures of it.

- fit_temperature: the T minimising the mean negative log-likelihood of softmax(logits / T): LBFGS on log T
  (so T stays positive), in float64.
- ece: the expected calibration error of the top-1 probability, torchmetrics' MulticlassCalibrationError(n_bins=15,
  norm="l1") exactly: the float32 confidences binned by torch.bucketize over linspace(0, 1, n_bins + 1) (right=True,
  so bin k is [k/n, (k+1)/n), and a probability of exactly 1 its own bin), then the sum over bins of
  |accuracy - mean confidence| times the bin's share of the images (float64).
- nll (mean cross-entropy) and brier (mean over images of the sum over classes of (p - onehot)^2).
- calibration_report: all of them before and after T, the dict `eval --calibrate` and
  `visionzoo.evaluate(..., calibrate=True)` return under "calibration"; reliability_plot draws it.
- TemperatureScaled: the module `export` writes for a calibrated model, the division baked into the graph.

Dividing every logit of an image by the same T > 0 keeps the order of its classes: top-1 and top-5 never change.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import DataError
from ..core.extras import require
from ..core.files import save_figure

N_BINS = 15
# T is kept within these: a split the model gets entirely right has its NLL falling for ever as T -> 0
T_MIN, T_MAX = 1e-2, 1e2


def _probs(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    return (logits.double() / temperature).softmax(dim=1)


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 200) -> float:
    """The T in [T_MIN, T_MAX] minimising nll(logits / T, labels): LBFGS (strong-Wolfe line search) on log T,
    float64. NLL is convex in 1/T, so the optimum is unique and clamping it into the range is the bounded one."""
    z, y = logits.detach().double().cpu(), labels.detach().long().cpu()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-10, tolerance_change=1e-14)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    with torch.enable_grad():  # evaluation runs under no_grad
        opt.step(closure)
    t = math.exp(float(log_t.detach()))
    return min(max(t, T_MIN), T_MAX) if math.isfinite(t) else (T_MIN if float(log_t) < 0 else T_MAX)


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the true class under softmax(logits / temperature), float64."""
    return float(F.cross_entropy(logits.double() / temperature, labels.long()))


def brier(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    """Mean over images of sum over classes of (p - onehot)^2 (0 is perfect, 2 the worst)."""
    p = _probs(logits, temperature)
    onehot = F.one_hot(labels.long(), p.shape[1]).double()
    return float(((p - onehot) ** 2).sum(1).mean())


def reliability_bins(probs: torch.Tensor, labels: torch.Tensor,
                     n_bins: int = N_BINS) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per bin of top-1 probability (torchmetrics' binning; n_bins + 1 slots, the last one for a probability of
    exactly 1): mean confidence, accuracy and number of images, float64 (0 for an empty bin). As torchmetrics,
    the confidences are binned in float32 (so a probability that rounds to 1 lands in the last slot), against
    float32 bin edges; the sums are float64."""
    conf, pred = probs.max(dim=1)
    conf = conf.float()
    correct = (pred == labels.to(pred.device)).double()
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float32, device=conf.device)
    index = torch.bucketize(conf, edges, right=True) - 1
    conf = conf.double()
    count = torch.zeros(n_bins + 1, dtype=torch.float64, device=conf.device)
    count.scatter_add_(0, index, torch.ones_like(conf))
    total_conf = torch.zeros_like(count).scatter_add_(0, index, conf)
    total_acc = torch.zeros_like(count).scatter_add_(0, index, correct)
    return torch.nan_to_num(total_conf / count), torch.nan_to_num(total_acc / count), count


def ece(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0, n_bins: int = N_BINS) -> float:
    """Expected calibration error of softmax(logits / temperature)'s top-1 probability: torchmetrics'
    MulticlassCalibrationError(n_bins=n_bins, norm="l1"), computed in float64."""
    conf, acc, count = reliability_bins(_probs(logits, temperature), labels, n_bins)
    return float(((acc - conf).abs() * count / count.sum()).sum())


def _bins_record(logits: torch.Tensor, labels: torch.Tensor, temperature: float, n_bins: int) -> dict[str, list]:
    """The reliability diagram's numbers, n_bins bins (probabilities of exactly 1 counted in the last)."""
    conf, acc, count = reliability_bins(_probs(logits, temperature), labels, n_bins)
    conf_sum, acc_sum = conf * count, acc * count
    conf_sum[-2] += conf_sum[-1]
    acc_sum[-2] += acc_sum[-1]
    count[-2] += count[-1]
    n = count[:-1]
    return {"confidence": torch.nan_to_num(conf_sum[:-1] / n).tolist(),
            "accuracy": torch.nan_to_num(acc_sum[:-1] / n).tolist(), "count": [int(c) for c in n.tolist()]}


def calibration_report(logits: torch.Tensor, labels: torch.Tensor, source: object = "the evaluated split",
                       n_bins: int = N_BINS) -> dict[str, Any]:
    """Fit T on the labelled images (label >= 0; open-set ones, -1, are left out) and measure ECE, NLL and Brier
    before and after it. Returns {"temperature", "ece_before", "ece_after", "nll_before", "nll_after",
    "brier_before", "brier_after", "bins", "num_images", "reliability": {"before", "after"}}, the last with each
    bin's mean confidence, accuracy and image count. No labelled image: a one-line DataError naming source (the
    split)."""
    labels = labels.long().cpu()
    known = labels >= 0
    if not bool(known.any()):
        raise DataError(f"calibration needs labelled images: {source} has none"
                        f"{f' (all {len(labels)} are unlabelled, label -1)' if len(labels) else ''}")
    z, y = logits.detach().cpu()[known], labels[known]
    t = fit_temperature(z, y)
    return {
        "temperature": t,
        "ece_before": ece(z, y, 1.0, n_bins), "ece_after": ece(z, y, t, n_bins),
        "nll_before": nll(z, y), "nll_after": nll(z, y, t),
        "brier_before": brier(z, y), "brier_after": brier(z, y, t),
        "bins": n_bins, "num_images": len(y),
        "reliability": {"before": _bins_record(z, y, 1.0, n_bins), "after": _bins_record(z, y, t, n_bins)},
    }


def summary_line(c: dict[str, Any]) -> str:
    """One line: T, then ECE, NLL and Brier before -> after."""
    return (f"calibration: T {c['temperature']:.4f}  ECE {c['ece_before']:.4f} -> {c['ece_after']:.4f}  "
            f"NLL {c['nll_before']:.4f} -> {c['nll_after']:.4f}  Brier {c['brier_before']:.4f} -> "
            f"{c['brier_after']:.4f}  ({c['num_images']} images, {c['bins']} bins)")


def reliability_plot(report: dict[str, Any], path: str | Path, title: str = "") -> Path:
    """The reliability diagram of a calibration_report, before and after T side by side: per bin the accuracy
    (bars) against the diagonal of perfect calibration, the gap to the bin's mean confidence shaded. PNG by the
    path's suffix, written atomically."""
    matplotlib = require("matplotlib", "plots", "the reliability diagram")
    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    n = report["bins"]
    width = 1.0 / n
    left = [i * width for i in range(n)]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.8), sharey=True)
    try:
        for ax, when in zip(axes, ("before", "after")):
            rows = report["reliability"][when]
            acc = [a if c else 0.0 for a, c in zip(rows["accuracy"], rows["count"])]
            conf = [f if c else 0.0 for f, c in zip(rows["confidence"], rows["count"])]
            ax.bar(left, acc, width=width, align="edge", color="tab:blue", edgecolor="black", linewidth=0.5,
                   label="accuracy")
            ax.bar(left, [f - a for f, a in zip(conf, acc)], bottom=acc, width=width, align="edge",
                   color="tab:red", alpha=0.3, edgecolor="tab:red", hatch="//", linewidth=0.5,
                   label="gap to mean confidence")
            ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
            t = 1.0 if when == "before" else report["temperature"]
            ax.set_title(f"{when} (T = {t:.3f}): ECE {report[f'ece_{when}']:.4f}")
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.set_xlabel("top-1 probability")
            ax.set_aspect("equal")
        axes[0].set_ylabel("accuracy")
        axes[0].legend(loc="upper left", fontsize=8)
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        save_figure(fig, path)
    finally:
        plt.close(fig)
    return Path(path)


class TemperatureScaled(nn.Module):
    """The model with its temperature built in, for export: model(x) / T, as the runner divides a calibrated
    checkpoint's logits."""

    def __init__(self, model: nn.Module, temperature: float):
        super().__init__()
        self.model = model
        self.temperature = float(temperature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).float() / self.temperature
