"""The training engine: `train(config)`, the step, the evaluation loop, optimizers and run outputs."""

from .evaluate import evaluate_model
from .step import train_one_epoch
from .trainer import train

__all__ = ["evaluate_model", "train", "train_one_epoch"]
