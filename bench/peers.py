"""B30: kt_core beside the tools a user would pick instead, PyTorch Lightning and fastai.

Every side trains the same model from the same initial weights on the same tensors in the same
batch order (the engine's (seed, epoch) permutations, sliced as the plain loop slices them),
with torch's own AdamW at the same learning rate and no weight decay, and each is a ratio to the
same plain loop (`bench.plain`), measured in the same process run. All sides train at once, each
in a thread of its own, taking turns of a few batches (`harness.Turns`: 16 of the MLP's ~2 ms
steps, one CNN step), so epoch i of every side runs in the same stretch of the machine's time;
each side's epoch is paired with the plain loop's, and a ratio is the median of those pairs.
Whole runs one after another, each by its best epoch, had left the sides within each other's
spread on this VM (fastai read 0.94-1.09 of the plain loop on small_cnn from one full run to the
next). Each framework runs as a user would start it, with its defaults:

- kt_core: a run folder with the worker's writers (metrics rows, status, STOP checks,
  checkpoints: every epoch, or every few where that would take over ~2 % of the run's own time,
  its turns: `Turns.own_clock`), as in B1;
- Lightning: `Trainer` with its default logger (TensorBoard, else CSV) and its default
  checkpoint every epoch, `log_every_n_steps` as kt_core's `log_every`, the loss logged with
  `self.log` at every step as its docs show; no progress bar (no terminal here);
- fastai: `Learner.fit` with its default callbacks (the Recorder's smoothed loss, the training
  loop's events), torch's AdamW through `OptimWrapper`, no progress bar.

The peers are optional (`requirements-bench.txt`); a peer that is not installed is a SKIP in
the detail, with the reason, and without either the figure is a SKIP. The final weights of each
side are compared with the plain loop's: ~0 proves that each did the same work.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import math
import warnings
from typing import Callable

import torch
import torch.nn.functional as F

from . import plain
from .figures import B1_MODELS, TURN_BATCHES, b1_task, planned_copy, run_config, spread, weight_gap, worker_writers
from .harness import FIGURES, Context, Skip, Target, Turns, median

log = logging.getLogger(__name__)

PEER_MODELS = ("mlp", "small_cnn")  # per-step-bound and compute-bound, as in B1
assert set(PEER_MODELS) <= set(B1_MODELS)
INSTALL = "pip install -r requirements-bench.txt"
# A CNN's epoch at full scale is 8 one-step turns, and its epoch pairs spread 0.85-1.15 in 2 runs
# (2026-12-02): twice the runs give 16 pairs a side, for ~1.5 min more (B30 325 s -> 410 s here).
RUNS_FACTOR = {"small_cnn": 2}


def missing_peers() -> dict[str, str]:
    """Peer name -> why it cannot be measured here (not installed)."""
    missing = {}
    for name, module in (("Lightning", "lightning"), ("fastai", "fastai")):
        if importlib.util.find_spec(module) is None:
            missing[name] = f"{module} is not installed ({INSTALL})"
    return missing


class EpochBatches:
    """The plain loop's batches as an iterable a framework loops over epoch after epoch: each
    epoch iterated is the next, in the engine's (seed, epoch) order. `len()` is the batch count."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int):
        self.x, self.y, self.batch_size, self.seed = x, y, batch_size, seed
        self.epoch = 0

    def __len__(self) -> int:
        return math.ceil(len(self.y) / self.batch_size)

    def __iter__(self):
        # A generator: an epoch counts from its first batch, so a framework that calls iter() to
        # probe the iterable (Lightning does) does not shift the order of the epochs.
        from kt_core.engine import epoch_generator

        generator = epoch_generator(self.seed, self.epoch)
        self.epoch += 1
        yield from plain.shuffled_batches(self.x, self.y, self.batch_size, generator)


# --- the sides: each trains `model`'s planned copy and calls `batch_done()` after every batch ---

def plain_side(model, data, cfg, ctx: Context, batch_done: Callable[[], None]) -> torch.nn.Module:
    t = cfg.train
    net, _ = planned_copy(model, cfg)
    net.to(ctx.device)
    optimizer = plain.make_optimizer(t.optimizer, net.parameters(), t.lr, t.momentum, t.weight_decay)
    batches = EpochBatches(data.train.x, data.train.y, t.batch_size, t.seed)
    for _ in range(t.epochs):
        for _ in plain.train_steps(net, optimizer, iter(batches), ctx.device):
            batch_done()
    return net


def kt_core_side(model, data, cfg, ctx: Context, batch_done: Callable[[], None],
                 clock: Callable[[], float] | None = None) -> torch.nn.Module:
    from kt_core.callbacks import Callback
    from kt_core.engine import fit

    class Turn(Callback):
        def should_stop(self, fit_ctx) -> bool:
            if fit_ctx.batch_in_epoch:  # 0 when the engine asks once more at an epoch's end
                batch_done()
            return False

    net, plan = planned_copy(model, cfg)
    with worker_writers(cfg, ctx, clock) as hooks:  # the checkpoint cadence by this side's own turns
        fit(net, data, cfg, plan=plan, callbacks=[*hooks, Turn()], device=ctx.device)
    return net


def lightning_side(model, data, cfg, ctx: Context, batch_done: Callable[[], None], run: int) -> torch.nn.Module:
    import lightning as L

    t = cfg.train
    net, _ = planned_copy(model, cfg)

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = net

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = F.cross_entropy(self.net(x), y)
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self):
            return plain.make_optimizer(t.optimizer, self.parameters(), t.lr, t.momentum, t.weight_decay)

    class Turn(L.Callback):
        def on_train_batch_end(self, *args) -> None:
            batch_done()

    with _quiet():
        trainer = L.Trainer(max_epochs=t.epochs, accelerator="gpu" if ctx.device.type == "cuda" else "cpu",
                            devices=1, default_root_dir=str(ctx.workdir / "lightning" / str(run)), callbacks=[Turn()],
                            log_every_n_steps=t.log_every, enable_progress_bar=False, enable_model_summary=False)
        trainer.fit(Module(), train_dataloaders=EpochBatches(data.train.x, data.train.y, t.batch_size, t.seed))
    return net


def fastai_side(model, data, cfg, ctx: Context, batch_done: Callable[[], None]) -> torch.nn.Module:
    with _quiet():  # its import's deprecation warnings
        from fastai.callback.core import Callback as FastaiCallback
        from fastai.callback.progress import ProgressCallback  # noqa: F401  (a user's `fastai.*.all` import adds it)
        from fastai.data.core import DataLoaders
        from fastai.learner import Learner
        from fastai.optimizer import OptimWrapper

    t = cfg.train
    net, _ = planned_copy(model, cfg)
    net.to(ctx.device)

    class Turn(FastaiCallback):
        order = 100  # after the Recorder: the batch's own bookkeeping is in the turn

        def after_batch(self) -> None:
            batch_done()

    batches = EpochBatches(data.train.x, data.train.y, t.batch_size, t.seed)
    opt = functools.partial(OptimWrapper, opt=functools.partial(torch.optim.AdamW, lr=t.lr,
                                                                 weight_decay=t.weight_decay))
    learn = Learner(DataLoaders(batches, [], device=ctx.device), net, loss_func=torch.nn.CrossEntropyLoss(),
                    opt_func=opt, lr=t.lr, wd=t.weight_decay, cbs=[Turn()], path=ctx.workdir / "fastai")
    with learn.no_bar(), learn.no_logging(), _quiet():
        learn.fit(t.epochs, lr=t.lr, wd=t.weight_decay)
    return net


@contextlib.contextmanager
def _quiet():
    """The frameworks' chatter (GPU available, logger chosen, epochs reached, their deprecation
    warnings) stays out of the bench's output."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(logging.NOTSET)


# --- the figure ------------------------------------------------------------------------------

def sides_for(ctx: Context, missing: dict[str, str]) -> dict[str, Callable]:
    sides: dict[str, Callable] = {"plain": plain_side, "kt_core": kt_core_side}
    runs = iter(range(10**6))
    if "Lightning" not in missing:
        sides["Lightning"] = lambda *a: lightning_side(*a, run=next(runs))
    if "fastai" not in missing:
        sides["fastai"] = fastai_side
    return sides


def compare(arch: str, ctx: Context, missing: dict[str, str]) -> tuple[dict[str, float], str]:
    """Each side's ratio to the plain loop on `arch`, and the detail of that model.

    Each repeat runs every side once, all in turns of `TURN_BATCHES` batches (`harness.Turns`),
    the turn order reversed from one repeat to the next; each side's epoch i is then paired with
    the plain loop's epoch i, which ran turn for turn beside it.
    """
    model, data = b1_task(arch, ctx)
    cfg = run_config(arch, ctx)
    sides = sides_for(ctx, missing)
    every = TURN_BATCHES.get(arch, 1)
    per_epoch = math.ceil(len(data.train) / cfg.train.batch_size)
    # Each loop's thread takes this count (`Turns.run`). A framework's import lands in its first
    # turn, in the warm-up epoch that is never timed.
    torch.set_num_threads(ctx.threads)
    pairs: dict[str, list[float]] = {name: [] for name in sides if name != "plain"}
    gaps = dict.fromkeys(pairs, 0.0)
    # Every timed epoch's seconds together, per side: a cost paid every few epochs (kt_core's
    # checkpoints, written when they stay within ~2 % of the time) is outside most epoch pairs,
    # and the median would leave it out; this ratio of the totals keeps it in, reported beside.
    totals = dict.fromkeys(sides, 0.0)
    plain_best = 0.0
    runs = ctx.scale.repeats * RUNS_FACTOR.get(arch, 1)
    for repeat in range(runs):
        order = list(sides) if repeat % 2 == 0 else list(sides)[::-1]
        turns = Turns(order, ctx.device, every)
        torch.manual_seed(cfg.train.seed)
        loops = {name: functools.partial(sides[name], model, data, cfg, ctx, functools.partial(turns.batch_done, name))
                 for name in order}
        loops["kt_core"] = functools.partial(loops["kt_core"], clock=turns.own_clock("kt_core"))
        trained = turns.run(loops)
        # Epoch 0 holds each side's setup (a Trainer, a Learner, a run folder): warm-up, not timed.
        seconds = {name: turns.epoch_times(name, per_epoch)[1:] for name in order}
        plain_best = max(plain_best, len(data.train) / min(seconds["plain"]))
        for name in order:
            totals[name] += sum(seconds[name])
        for name in pairs:
            pairs[name] += [p / s for s, p in zip(seconds[name], seconds["plain"])]
            gaps[name] = max(gaps[name], weight_gap(trained[name], trained["plain"]))
    ratios, parts = {}, []
    for name, values in pairs.items():
        ratios[name] = median(values)
        same = "same final weights" if gaps[name] < 1e-4 else f"FINAL WEIGHTS DIFFER by {gaps[name]:.1e}"
        parts.append(f"{name} {ratios[name]:.2f} (range {spread(values)}, all epochs together "
                     f"{totals['plain'] / totals[name]:.2f}, {same})")
    parts += [f"{name} SKIP ({why})" for name, why in missing.items()]
    turn = f"turns of {every} batch{'es' if every > 1 else ''}"
    return ratios, (f"{arch} ({len(pairs['kt_core'])} epoch pairs in {runs} runs, {turn}): " + ", ".join(parts)
                    + f"; plain {plain_best:.0f} img/s")


@FIGURES.register("B30", title="peers: kt_core's images/s ratio to the plain loop / the fastest installed peer's "
                               "(PyTorch Lightning, fastai; worst of the MLP and small_cnn)",
                  target=Target(">=", 1.0))
def peers(ctx: Context) -> tuple[float, str]:
    missing = missing_peers()
    if len(missing) == 2:
        raise Skip("neither peer is installed: " + "; ".join(missing.values()))
    standings, details = [], []
    for arch in PEER_MODELS:
        ratios, detail = compare(arch, ctx, missing)
        fastest_peer = max(v for k, v in ratios.items() if k != "kt_core")
        standings.append(ratios["kt_core"] / fastest_peer)
        details.append(detail)
    return min(standings), (f"each side / the same plain loop, the median of its epochs' ratios to the plain loop's "
                            f"epochs run turn for turn beside them: " + "; ".join(details))
