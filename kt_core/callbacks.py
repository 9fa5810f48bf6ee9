"""The engine's callback hooks: how everything observable leaves the training loop.

Lightning-style objects whose hooks are no-ops until overridden. The run worker plugs in a
metrics writer, a checkpointer and a stop flag; a transfer plan brings gradual unfreezing
(`transfer.GradualUnfreezing`). A leaf module: no imports, so a plan can define a callback
without importing the engine.
"""

from __future__ import annotations


class Callback:
    """Hooks the engine calls; every hook is a no-op until overridden. `ctx` is the engine's
    `FitContext`; `state` a checkpoint dict (`engine.checkpoint_state`)."""

    def on_fit_start(self, ctx) -> None: ...

    def on_resume(self, ctx, state: dict) -> None:
        """After the model's weights are restored, before the optimizer's state is loaded: add
        back what a callback added to the optimizer before the checkpoint (param groups)."""

    def on_epoch_start(self, ctx) -> None:
        """Before the first batch of epoch `ctx.epoch` (0-based); not for an epoch resumed mid-way."""

    def on_step_end(self, ctx, row: dict) -> None:
        """Called for each logged step row (step 1, then every `log_every` steps), not every batch."""

    def on_epoch_end(self, ctx, row: dict) -> None: ...

    def should_stop(self, ctx) -> bool:
        """Checked after every batch: True finishes the batch, checkpoints `last` and stops."""
        return False

    def on_checkpoint(self, ctx, state: dict, tags: tuple[str, ...]) -> None:
        """The state of an epoch's end or a stop, for `tags`: ("last",), or ("last", "best") for a
        new best validation accuracy. A hook may add to `state` before the writer (the plan's and
        the objective's callbacks come first); what it holds are the live tensors, not copies."""

    def on_fit_end(self, ctx, result) -> None: ...
