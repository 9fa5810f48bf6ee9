"""Looking inside a model without changing it: hooks, eval mode, no grad, and everything put back.

The layer tree's dry run, the cost estimate, the BatchNorm statistics check and the feature cache
all run a model once to see what flows through it. `probe` is that one pattern: hooks on the
named modules, the model in eval mode under `torch.no_grad()`, and on exit the hooks removed and
every module's own train/eval mode restored (a frozen BatchNorm that was in eval mode inside a
training model stays so). A leaf module: torch only.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Callable, Iterator, Mapping

import torch
from torch import nn

log = logging.getLogger(__name__)


@contextlib.contextmanager
def probe(model: nn.Module, before: Mapping[str, Callable] | None = None,
          after: Mapping[str, Callable] | None = None) -> Iterator[nn.Module]:
    """`with probe(model, before={name: pre_hook}, after={name: hook}): model(x)`.

    `before` hooks are forward pre-hooks `(module, args)`, `after` hooks forward hooks
    `(module, args, output)`, keyed by qualified module name. Modules that take no Python hooks
    (inside TorchScript) are skipped.
    """
    before, after = before or {}, after or {}
    modes = [(m, m.training) for m in model.modules()]  # parents before children
    handles = []
    try:
        for name, module in model.named_modules():
            try:
                if name in before:
                    handles.append(module.register_forward_pre_hook(before[name]))
                if name in after:
                    handles.append(module.register_forward_hook(after[name]))
            except (RuntimeError, AttributeError):  # TorchScript modules take no Python hooks
                log.debug("no hook on %s (%s)", name, type(module).__name__)
        model.eval()
        with torch.no_grad():
            yield model
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes:  # a parent's train() sets its children; theirs come after it
            module.train(training)


def first_device(model: nn.Module) -> torch.device:
    """Where the model's first parameter lives (the CPU for a model without parameters)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))
