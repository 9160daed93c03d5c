from .checkpoint import atomic_save, load_checkpoint
from .evaluate import evaluate, evaluate_model
from .trainer import train, train_one_epoch

__all__ = ["atomic_save", "evaluate", "evaluate_model", "load_checkpoint", "train", "train_one_epoch"]
