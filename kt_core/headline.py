"""The one figure a run is judged by, and the words that say what it is.

Every place that shows a run's result (the dashboard, the run list, `compare`, the demo's
conclusion) calls `headline(summary)`, so the number a user reads is always the same one and
always labelled the same way. It is a *held-out* figure: accuracy on a test split that played
no part in choosing the checkpoint (the dataset's own test split, or one carved out of the
labelled data before the validation split), for the checkpoint that was best on validation.
A run without a test split falls back to its last epoch's validation accuracy, labelled so:
the validation split chose when to stop, so that figure can flatter (up to 5.7 points on the
demo story for the best epoch's).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SPLIT_WORDS = {"dataset": "test split", "carved": "test split carved from the labelled data"}


@dataclass(frozen=True)
class Headline:
    """`value` is an accuracy in [0, 1] (None: the run has no result yet)."""

    value: float | None
    label: str
    split: str  # "test" | "val" | ""
    checkpoint: str  # "best" | "last" | ""

    @property
    def held_out(self) -> bool:
        return self.split == "test"

    def format(self, digits: int = 1) -> str:
        """E.g. "93.4 % held-out accuracy (test split, best-on-validation checkpoint)"."""
        if self.value is None:
            return f"— {self.label}"
        return f"{self.value * 100:.{digits}f} % {self.label}"

    def percent(self, digits: int = 1) -> str:
        return "—" if self.value is None else f"{self.value * 100:.{digits}f} %"


def headline(summary: dict[str, Any] | None) -> Headline:
    """The headline of a run from its `summary.json` (as written by the worker)."""
    summary = summary or {}
    stored = summary.get("headline")
    if isinstance(stored, dict) and {"value", "label", "split", "checkpoint"} <= set(stored):
        return Headline(stored["value"], stored["label"], stored["split"], stored["checkpoint"])
    return compute(summary)


def compute(summary: dict[str, Any]) -> Headline:
    """The rule itself, from the summary's fields (also reads summaries written before the
    headline was stored)."""
    if summary.get("test_acc") is not None:
        where = SPLIT_WORDS.get(summary.get("test_split") or "dataset", "test split")
        return Headline(float(summary["test_acc"]), f"held-out accuracy ({where}, best-on-validation checkpoint)",
                        "test", "best")
    if summary.get("final_val_acc") is not None:
        return Headline(float(summary["final_val_acc"]),
                        "validation accuracy (last epoch; no held-out test split, so not a held-out figure)",
                        "val", "last")
    return Headline(None, "accuracy (no result yet)", "", "")


def before_value(summary: dict[str, Any] | None) -> float | None:
    """The untrained model's accuracy (measured when the source's head was kept), on the
    headline's split where it was measured there, else on validation; None when not measured."""
    before = (summary or {}).get("before_training") or {}
    value = before.get("test_acc") if headline(summary).split == "test" else None
    return before.get("val_acc") if value is None else value


def before_training(summary: dict[str, Any] | None) -> str | None:
    """E.g. "before training: 81.0 %"; None when the run did not measure its untrained model."""
    value = before_value(summary)
    return None if value is None else f"before training: {value * 100:.1f} %"
