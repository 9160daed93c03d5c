"""FixRes (Touvron et al., "Fixing the train-test resolution discrepancy", NeurIPS 2019):
fine-tune at the test resolution (`finetune_res`), and sweep test resolutions (`evaluate_sizes`)."""

from .finetune import finetune_config, finetune_res
from .sweep import evaluate_sizes, plot_sizes, sizes_table

__all__ = ["finetune_config", "finetune_res", "evaluate_sizes", "plot_sizes", "sizes_table"]
