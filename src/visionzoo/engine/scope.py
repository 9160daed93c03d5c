"""Which part of a model trains: all of it, the classifier only (cRT), or FixRes fine-tuning."""

from __future__ import annotations

from torch import nn

from ..data.datasets import DataError
from ..models.oltr import OLTRResNet
from ..models.registry import model_cfg_of


def classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    """Module-name prefixes ("fc.") of the model's classifier parameters."""
    if isinstance(model, OLTRResNet):
        return ("meta_classifier.",)
    cls = model_cfg_of(model).classifier
    return tuple(f"{c}." for c in ((cls,) if isinstance(cls, str) else cls) if c)


def _norm_name(model: nn.Module, name: str) -> str:
    """The name a config's norm layer has in this model (SyncBatchNorm conversion keeps names)."""
    try:
        module = model.get_submodule(name)
    except AttributeError:
        raise DataError(f"{model.visionzoo_name}: its config names final_norm {name!r}, which the model lacks") from None
    if not isinstance(module, nn.modules.batchnorm._BatchNorm):
        raise DataError(f"{model.visionzoo_name}: final_norm {name!r} is {type(module).__name__}, not a BatchNorm")
    return name


def apply_train_scope(model: nn.Module, scope: str) -> list[nn.Module]:
    """Freeze what the scope leaves out; return the modules to keep in eval mode while training.

    classifier (cRT): only the classifier's parameters train; norm layers elsewhere keep their statistics.
    fixres (Touvron et al. 2019, as their ResNet-50 fine-tuning): the classifier trains and the model's
    final norm layer (ModelCfg.final_norm) re-estimates its running statistics at the new resolution;
    its affine parameters and everything else stay frozen and in eval mode (dropout included).
    """
    if scope == "all":
        return []
    heads = classifier_prefixes(model)
    if not heads:
        raise DataError(f"{model.visionzoo_name}: no known classifier to train on its own")
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(heads))
    if scope == "classifier":
        return [m for name, m in model.named_modules()
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and not f"{name}.".startswith(heads)]
    if scope != "fixres":
        raise ValueError(f"unknown train scope {scope!r}")
    final = model_cfg_of(model).final_norm
    keep = heads + ((f"{_norm_name(model, final)}.",) if final else ())
    # leaf modules only: eval() recurses, so a frozen parent would switch the final norm off too
    return [m for name, m in model.named_modules() if not any(True for _ in m.children())
            and not f"{name}.".startswith(keep)]
