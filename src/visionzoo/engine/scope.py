"""Which part of a model trains: all of it, the classifier only (cRT), or FixRes fine-tuning."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from ..config import spelled
from ..core.errors import ConfigError
from ..models.oltr import OLTRResNet
from ..models.registry import model_cfg_of


def classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    """Module-name prefixes ("fc.") of the model's classifier parameters."""
    if isinstance(model, OLTRResNet):
        return ("meta_classifier.",)
    cls = model_cfg_of(model).classifier
    return tuple(f"{c}." for c in ((cls,) if isinstance(cls, str) else cls) if c)


@dataclass
class TrainScope:
    """How to put a (partly frozen) model in training mode.

    train_only None: model.train(), then `frozen` back to eval (cRT keeps the backbone's norm statistics).
    train_only a list: model.eval(), then only those modules to train (FixRes: as its reference code,
    the whole model, root included, runs in eval mode; functional dropout on the root stays off).
    """

    frozen: list[nn.Module] = field(default_factory=list)
    train_only: list[nn.Module] | None = None
    running_stats: list[nn.Module] = field(default_factory=list)  # norm layers re-estimating statistics

    def set_mode(self, model: nn.Module) -> None:
        if self.train_only is None:
            model.train()
            for m in self.frozen:
                m.eval()
        else:
            model.eval()
            for m in self.train_only:
                m.train()


def final_norm(model: nn.Module) -> nn.Module | None:
    """The model's ModelCfg.final_norm module (SyncBatchNorm conversion keeps names), checked to be a BN."""
    name = model_cfg_of(model).final_norm
    if not name:
        return None
    try:
        module = model.get_submodule(name)
    except AttributeError:
        raise ConfigError(f"{spelled('train_scope', 'fixres')}: {model.visionzoo_name}'s config names final_norm "
                          f"{name!r}, which the model lacks") from None
    if not isinstance(module, nn.modules.batchnorm._BatchNorm):
        raise ConfigError(f"{spelled('train_scope', 'fixres')}: {model.visionzoo_name}'s final_norm {name!r} is "
                          f"{type(module).__name__}, not a BatchNorm")
    return module


def apply_train_scope(model: nn.Module, scope: str) -> TrainScope:
    """Freeze what the scope leaves out and say which modules run in training mode.

    classifier (cRT): only the classifier's parameters train; norm layers elsewhere keep their statistics.
    fixres (Touvron et al. 2019, as their ResNet-50 fine-tuning): the classifier trains and the model's
    final norm layer (ModelCfg.final_norm) re-estimates its running statistics at the new resolution;
    its affine parameters and everything else stay frozen and in eval mode (dropout included).
    """
    if scope == "all":
        return TrainScope()
    heads = classifier_prefixes(model)
    if not heads:
        raise ConfigError(f"{spelled('train_scope', scope)}: {model.visionzoo_name} has no known classifier to train "
                          "on its own")
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(heads))
    if scope == "classifier":
        return TrainScope(frozen=[m for name, m in model.named_modules()
                                  if isinstance(m, nn.modules.batchnorm._BatchNorm)
                                  and not f"{name}.".startswith(heads)])
    if scope != "fixres":
        raise ValueError(f"unknown train scope {scope!r}")
    norm = final_norm(model)
    top = [m for name, m in model.named_modules() if f"{name}." in heads]
    return TrainScope(train_only=top + ([norm] if norm is not None else []),
                      running_stats=[norm] if norm is not None else [])
