"""Helpers for the AppTest suites (no tests here): hand-written run folders and app drivers.

Run folders are written exactly as the run folder contract says (DESIGN.md section 3), through
`kt_core.rundir.create_run` for the config and status, so the pages are tested against what a
worker leaves on disk without waiting for real training.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from streamlit.testing.v1 import AppTest

from kt_core import rundir
from kt_core.config import DatasetConfig, RunConfig, SourceConfig, TrainConfig

APP = str(Path(__file__).resolve().parents[1] / "app.py")


def make_run(name: str = "hand", epochs: int = 3, steps_per_epoch: int = 4, state: str = "completed",
             done_epochs: int | None = None, acc=(0.5, 0.7, 0.8), baseline_of: str | None = None) -> str:
    """A run folder with `done_epochs` epochs of metrics (step rows every step, epoch rows)."""
    cfg = RunConfig(name=name, source=SourceConfig(kind="arch", arch="small_cnn"),
                    dataset=DatasetConfig(name="sklearn_digits", per_class=5),
                    train=TrainConfig(epochs=epochs, batch_size=16), baseline_of=baseline_of).validate()
    folder = rundir.create_run(cfg)
    done = epochs if done_epochs is None else done_epochs
    with open(folder / "metrics.jsonl", "a") as f:
        for e in range(done):
            for s in range(steps_per_epoch):
                step = e * steps_per_epoch + s + 1
                f.write(json.dumps({"kind": "step", "step": step, "epoch": e + 1, "train_loss": 2.0 / step,
                                    "lr": 1e-3, "images_per_s": 400.0, "time": 0.0}) + "\n")
            f.write(json.dumps({"kind": "epoch", "epoch": e + 1, "step": (e + 1) * steps_per_epoch,
                                "train_loss": 1.0 / (e + 1), "train_acc": acc[e % len(acc)],
                                "val_loss": 1.2 / (e + 1), "val_acc": acc[e % len(acc)] - 0.05,
                                "epoch_s": 0.5, "lr": 1e-3, "time": 0.0}) + "\n")
    rundir.update_status(folder, state=state, epoch=done, step=done * steps_per_epoch,
                       total_steps=epochs * steps_per_epoch)
    if state == "completed":
        rundir.write_json_atomic(folder / "summary.json", {
            "state": "completed", "best_val_acc": max(acc) - 0.05, "final_val_acc": acc[(done - 1) % len(acc)] - 0.05,
            "test_acc": None, "epochs": done})
    return folder.name


def app_at(page: str | None = None, **query) -> AppTest:
    """The whole app (navigation + sidebar) run once, switched to `page` ("train", "runs", ...)."""
    at = AppTest.from_file(APP, default_timeout=60)
    for key, value in query.items():
        at.query_params[key] = value
    at.run()
    if page:
        at.switch_page(f"app_pages/{page}.py").run()
    return at


def draft(at: AppTest):
    """The page's draft (kt_core.drafts.Draft): the setup Start would launch."""
    return at.session_state["kt_draft"]


def set_piece(at: AppTest, piece: str, value) -> None:
    """Put one piece (source, dataset, plan, train) of the draft, as a page would."""
    setattr(draft(at).config, piece, value)


def chart_traces(at: AppTest, index: int = 0) -> list[dict]:
    """The traces of the `index`-th Plotly chart on the page, as Plotly JSON."""
    charts = at.get("plotly_chart")
    assert len(charts) > index, f"only {len(charts)} Plotly chart(s) on the page"
    return json.loads(charts[index].proto.spec)["data"]


def live_chart(at: AppTest) -> dict:
    """What the live chart of a running run was sent: {traces, x_max, title, height}."""
    found = [e for e in at.get("bidi_component") if e.proto.component_name == "kt_live_curves"]
    assert found, "no live chart on the page"
    return json.loads(found[0].proto.json)


def chart_layout(at: AppTest, index: int = 0) -> dict:
    return json.loads(at.get("plotly_chart")[index].proto.spec)["layout"]


def no_exceptions(at: AppTest) -> None:
    """A page never shows a raw traceback: st.exception elements mean an uncaught error."""
    assert not at.exception, [e.value for e in at.exception]


def errors(at: AppTest) -> list[str]:
    """The error messages as a person reads them (Markdown escapes removed)."""
    return [shown(e.value) for e in at.error]


def shown(markdown: str) -> str:
    return re.sub(r"\\(.)", r"\1", markdown)
