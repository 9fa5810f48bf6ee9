"""The terminal's view of a run training in this process: an engine callback (see terminal.py)."""

from __future__ import annotations

import time

from ..callbacks import Callback
from ..engine import FitContext, FitResult
from .terminal import Terminal, _LiveBars, format_duration


class TrainProgress(Callback):
    """An engine callback: the live bar of a run in a terminal, or one line per epoch."""

    def __init__(self, terminal: Terminal, label: str = ""):
        self.terminal = terminal
        self.label = f"{label} " if label else ""
        self.bars: _LiveBars | None = None
        self.loss = self.val_acc = self.rate = None

    def on_fit_start(self, ctx: FitContext) -> None:
        self.epochs = ctx.cfg.train.epochs
        self.total = ctx.total_steps
        self.start_step, self.started = ctx.step, time.monotonic()
        if self.terminal.live:
            self.bars = self.terminal.bars
            self.task = self.bars.add(self._epoch_text(ctx.epoch + 1), self.total, ctx.step, self._stats(ctx.step))

    def on_step_end(self, ctx: FitContext, row: dict) -> None:
        self.loss, self.rate = row.get("train_loss"), row.get("images_per_s")
        if self.bars is not None:
            self.bars.update(self.task, completed=row["step"], description=self._epoch_text(row["epoch"]),
                             stats=self._stats(row["step"]))

    def on_epoch_end(self, ctx: FitContext, row: dict) -> None:
        self.val_acc = row.get("val_acc")  # images/s stays the step rows' figure (engine: one definition)
        parts = [f"{self.label}epoch {row['epoch']}/{self.epochs}", f"step {row['step']}/{self.total}",
                 f"loss {row['train_loss']:.4f}", f"train_acc {row['train_acc']:.4f}"]
        if row.get("val_acc") is not None:
            parts.append(f"val_acc {row['val_acc']:.4f}")
        parts += [f"{self.rate:,.0f} img/s" if self.rate else "", f"ETA {format_duration(self._eta(row['step']))}"]
        text = "  ".join(p for p in parts if p)
        if self.bars is not None:
            self.bars.print(text)
            self.bars.update(self.task, completed=row["step"], stats=self._stats(row["step"]),
                             description=self._epoch_text(min(row["epoch"] + 1, self.epochs)))
            self.bars.redraw(force=True)
        else:
            self.terminal.line(text)

    def on_fit_end(self, ctx: FitContext, result: FitResult) -> None:
        self.close()

    def close(self) -> None:
        """Take the bar down (also when the run failed between two hooks)."""
        if self.bars is not None:
            self.bars.redraw(force=True)
            self.bars.remove(self.task)
            self.bars = None

    def _epoch_text(self, epoch: int) -> str:
        return f"{self.label}epoch {epoch}/{self.epochs}"

    def _eta(self, step: int) -> float | None:
        done = step - self.start_step
        if done <= 0:
            return None
        return (self.total - step) * (time.monotonic() - self.started) / done

    def _stats(self, step: int) -> str:
        parts = [f"{step}/{self.total}"]
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4f}")
        if self.val_acc is not None:
            parts.append(f"val_acc {self.val_acc:.4f}")
        if self.rate:
            parts.append(f"{self.rate:,.0f} img/s")
        parts.append(f"ETA {format_duration(self._eta(step))}")
        return "  ".join(parts)

