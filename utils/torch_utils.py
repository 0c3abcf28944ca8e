"""Small torch helpers."""

from __future__ import annotations

import functools
from typing import Callable

import torch


class eval_mode:
    """The module in eval mode (batch-norm running statistics), its previous mode restored after.

    A context manager (``with eval_mode(model): ...``) and, as ``eval_mode.method`` /
    ``eval_mode.first_argument``, decorators for a method of the module or a function of it."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module

    def __enter__(self) -> torch.nn.Module:
        self.was_training = self.module.training
        self.module.eval()
        return self.module

    def __exit__(self, *exc) -> None:
        self.module.train(self.was_training)

    @staticmethod
    def first_argument(fn: Callable) -> Callable:
        """Run ``fn(module, ...)`` (a method, or a protocol of a model) with ``module`` in eval mode."""

        @functools.wraps(fn)
        def wrapper(module: torch.nn.Module, *args, **kwargs):
            with eval_mode(module):
                return fn(module, *args, **kwargs)

        return wrapper
