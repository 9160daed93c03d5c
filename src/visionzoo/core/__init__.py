"""The bottom layer: helpers every other part of visionzoo uses, importing nothing else from the package.

- errors: the one base class of user-facing errors and its four kinds
- precision: the one precision vocabulary (fp32/fp16/bf16/int8, auto) and autocast
- distributed: device resolution and torch.distributed set-up from torchrun's environment
- files: atomic writes and JSON output
"""

__version__ = "0.1.0"
