"""The live-curve figure and progress caption, as pure functions of metric rows and status."""

import json

from ui import live_chart
from ui.curves import Series, build_figure, progress_info, split_rows, traces


def rows(epochs=2, steps=4):
    out = []
    for e in range(epochs):
        for s in range(steps):
            step = e * steps + s + 1
            out.append({"kind": "step", "step": step, "epoch": e + 1, "train_loss": 1.0 / step, "images_per_s": 100.0})
        out.append({"kind": "epoch", "epoch": e + 1, "step": (e + 1) * steps, "train_loss": 0.5, "train_acc": 0.6 + e / 10,
                    "val_loss": 0.7, "val_acc": 0.5 + e / 10})
    return out


def test_the_live_chart_and_the_final_figure_draw_the_same_lines():
    series = [Series("transfer", rows()), Series("from scratch", rows(epochs=1))]
    lines, fig = traces(series), build_figure(series, uirevision="x")
    assert [(t.name, t.x, t.y) for t in lines] == [(t.name, list(t.x), list(t.y)) for t in fig.data]
    assert [t.panel for t in lines] == [0, 0, 0, 1, 1] * 2
    # What the browser gets at each poll is plain JSON, with the planned epochs as the x range.
    sent = json.loads(json.dumps(live_chart.payload(lines, x_max=10, title=None, height=380)))
    assert sent["x_max"] == 10 and [t["name"] for t in sent["traces"]] == [t.name for t in lines]
    assert sent["traces"][0]["markers"] is False and sent["traces"][4]["dash"] == "dot"


def test_step_and_epoch_rows_are_told_apart_with_or_without_a_kind_field():
    steps, epochs = split_rows(rows())
    assert len(steps) == 8 and len(epochs) == 2
    legacy = [{"step": 1, "epoch": 1, "train_loss": 1.0}, {"epoch": 1, "train_loss": 1.0, "val_acc": 0.5}]
    steps, epochs = split_rows(legacy)
    assert steps == legacy[:1] and epochs == legacy[1:]


def test_figure_draws_loss_and_accuracy_per_step_and_epoch_with_the_baseline_overlaid():
    fig = build_figure([Series("transfer", rows()), Series("from scratch", rows(epochs=1))], uirevision="run-a")
    names = [t.name for t in fig.data]
    assert names[:5] == ["transfer · train loss (step)", "transfer · train loss", "transfer · val loss",
                         "transfer · train acc", "transfer · val acc"]
    assert "from scratch · val acc" in names
    val_acc = next(t for t in fig.data if t.name == "transfer · val acc")
    assert list(val_acc.x) == [1, 2] and list(val_acc.y) == [0.5, 0.6]
    # Step rows sit on the epoch axis: step 4 of 4 per epoch ends epoch 1.
    step_trace = fig.data[0]
    assert list(step_trace.x)[3] == 1.0 and list(step_trace.x)[-1] == 2.0
    # The baseline has its own colour; train/val differ by dash.
    colours = {t.name.split(" · ")[0]: t.line.color for t in fig.data}
    assert colours["transfer"] != colours["from scratch"]
    assert fig.layout.uirevision == "run-a"


def test_nan_rows_and_missing_validation_are_skipped_not_drawn():
    data = [{"kind": "step", "step": 1, "epoch": 1, "train_loss": float("nan")},
            {"kind": "epoch", "epoch": 1, "step": 1, "train_loss": 0.4, "train_acc": 0.9, "val_loss": None, "val_acc": None}]
    names = [t.name for t in build_figure([Series("run", data)], "x").data]
    assert names == ["run · train loss", "run · train acc"]


def test_progress_caption_has_epoch_step_speed_and_eta_while_running():
    info = progress_info({"state": "running", "epoch": 1, "step": 25, "total_steps": 100}, rows(1),
                         batch_size=50, epochs=4)
    assert info.fraction == 0.25
    # 75 steps left x 50 images / 100 images/s = 37.5 s
    assert info.text == "running · epoch 1/4 · step 25/100 · 100 images/s · ETA 38 s"
    done = progress_info({"state": "completed", "epoch": 4, "step": 100, "total_steps": 100}, rows(1), 50, 4)
    assert done.fraction == 1.0 and "ETA" not in done.text


def test_eta_follows_the_epochs_wall_time_once_one_has_ended():
    """Validation and checkpoints are time the user waits too: once an epoch has ended, the ETA
    is its pace (the step rows' speed alone said 3 s for a run that took 14 s)."""
    epoch_rows = [{"kind": "epoch", "epoch": 0, "step": 0, "train_loss": 2.3, "epoch_s": 9.0},  # before training
                  {"kind": "step", "step": 1, "epoch": 1, "train_loss": 1.0, "images_per_s": 6400.0},
                  {"kind": "epoch", "epoch": 1, "step": 2, "train_loss": 1.0, "epoch_s": 2.0},
                  {"kind": "epoch", "epoch": 2, "step": 4, "train_loss": 0.9, "epoch_s": 4.0}]
    info = progress_info({"state": "running", "epoch": 2, "step": 4, "total_steps": 20}, epoch_rows, 64, 10)
    assert info.text == "running · epoch 2/10 · step 4/20 · 6,400 images/s · ETA 24 s"  # 8 epochs left x 3 s


def test_a_queued_run_says_what_it_waits_for():
    info = progress_info({"state": "queued", "note": "waiting for source run demo-source", "epoch": 0, "step": 0,
                          "total_steps": None}, [], 64, 30)
    assert info.fraction == 0.0 and info.text == "queued · waiting for source run demo-source · epoch 0/30"


def test_a_long_run_s_step_trace_is_thinned_but_keeps_its_newest_point():
    from ui.curves import MAX_STEP_POINTS, Series, build_figure

    rows = [{"kind": "step", "step": s, "epoch": 1 + s // 100, "train_loss": 1.0 / s} for s in range(1, 5001)]
    fig = build_figure([Series("long", rows, 100)], "long")
    step_trace = next(t for t in fig.data if t.name.endswith("(step)"))
    assert len(step_trace.y) <= MAX_STEP_POINTS + 1
    assert step_trace.y[-1] == 1.0 / 5000 and step_trace.y[0] == 1.0


def test_rows_are_read_again_from_the_start_after_a_resume_rewrote_the_metrics(monkeypatch):
    import streamlit as st

    from kt_core import rundir
    from ui.curves import new_rows
    from tests.test_app_support import make_run

    monkeypatch.setattr(st, "session_state", {})
    run_id = make_run("resumed", epochs=3, steps_per_epoch=4)
    assert len(new_rows(run_id)) == 3 * 5
    rundir.truncate_metrics(run_id, 4)  # what resume does: keep rows up to the checkpoint's step
    assert [r["step"] for r in new_rows(run_id)] == [1, 2, 3, 4, 4]  # 4 step rows + epoch 1's row


def multitask_rows(learnt="uncertainty", epochs=2, steps=4):
    """Rows as kt_core.multitask.TaskMetrics writes them: uncertainty weights in every row, DWA's in epoch rows."""
    out = []
    for row in rows(epochs, steps):
        if row["kind"] == "epoch":
            row.update({"train_acc/target": row["train_acc"], "val_acc/target": row["val_acc"],
                        "train_acc/mnist": 0.9, "val_acc/mnist": 0.85, "train_loss/mnist": 0.2})
        if learnt == "uncertainty" or row["kind"] == "epoch":
            t = row["step"] if learnt == "uncertainty" else row["epoch"]
            row.update({"weight/target": 0.5 + t / 100, "weight/mnist": 0.5 - t / 100})
        out.append(row)
    return out


def test_learnt_task_weights_are_drawn_over_time_in_a_panel_of_their_own_in_each_tasks_colour():
    series = [Series("joint", multitask_rows("uncertainty"))]
    lines = {t.name: t for t in traces(series)}
    target, mnist = lines["joint · target weight"], lines["joint · mnist weight"]
    assert target.panel == mnist.panel == 2
    # every step row's weight at its step (4 steps an epoch), then the epoch rows' at the epoch
    assert target.x == [0.25, 0.5, 0.75, 1.0, 1.0, 1.25, 1.5, 1.75, 2.0, 2.0]
    assert target.y[:4] == [0.51, 0.52, 0.53, 0.54] and mnist.y[-1] == 0.42
    assert target.color == lines["joint · val acc"].color and mnist.color == lines["joint · mnist val acc"].color
    assert mnist.group == lines["joint · mnist val acc"].group  # one legend toggle hides a task's lines
    fig = build_figure(series, uirevision="x")
    assert [a.text for a in fig.layout.annotations] == ["Loss", "Accuracy", "Task weights"]
    assert {t.xaxis for t in fig.data if t.name.endswith(" weight")} == {"x3"}
    # DWA changes its weights once an epoch: one marked point per epoch
    dwa = {t.name: t for t in traces([Series("dwa", multitask_rows("dwa"))])}["dwa · mnist weight"]
    assert dwa.x == [1.0, 2.0] and dwa.y == [0.49, 0.48] and dwa.markers
    # fixed weights are not learnt, so not drawn: two panels, as a single-task run
    fixed = [{k: v for k, v in r.items() if not k.startswith("weight/")} for r in multitask_rows()]
    assert {t.panel for t in traces([Series("fixed", fixed)])} == {0, 1}
    assert [a.text for a in build_figure([Series("fixed", fixed)], uirevision="y").layout.annotations] == ["Loss", "Accuracy"]


def _step(i: int) -> dict:
    return {"kind": "step", "step": i + 1, "epoch": i // 100 + 1, "train_loss": 1.0 / (i + 1), "images_per_s": 100.0 + i}


def _epoch(e: int) -> dict:
    return {"kind": "epoch", "epoch": e, "step": e * 100, "train_loss": 1.0 / e, "val_acc": 0.5, "epoch_s": 1.0}


def _rows(steps: int) -> list[dict]:
    rows = []
    for i in range(steps):
        rows.append(_step(i))
        if (i + 1) % 100 == 0:
            rows.append(_epoch((i + 1) // 100))
    return rows


def test_the_digest_of_a_long_run_keeps_every_epoch_and_a_bounded_even_sample_of_steps():
    from ui.curves import RowDigest, is_step_row

    rows = _rows(100_000)
    digest = RowDigest(limit=50)
    digest.extend(rows)
    kept = digest.rows
    steps = [r for r in kept if is_step_row(r)]
    assert [r for r in kept if not is_step_row(r)] == [r for r in rows if not is_step_row(r)]  # all 1000 epochs
    assert 50 <= len(steps) <= 2 * 50 + 1
    assert steps[-1]["step"] == 100_000  # the newest step, always
    gaps = {b["step"] - a["step"] for a, b in zip(steps[:-1], steps[1:-1])}
    assert len(gaps) == 1  # evenly spaced (the newest may follow closer)
    # rows added a few at a time (a poll at a time) give the very same digest as all at once
    piecewise = RowDigest(limit=50)
    for start in range(0, len(rows), 333):
        piecewise.extend(rows[start:start + 333])
    assert piecewise.rows == kept


def test_a_poll_reads_only_the_bytes_appended_since_the_last_one(monkeypatch, tmp_path):
    import json

    import streamlit as st

    from kt_core import rundir
    from tests.test_app_support import make_run
    from ui import curves

    monkeypatch.setattr(st, "session_state", {})
    run_id = make_run("long", epochs=1, steps_per_epoch=4)
    path = rundir.metrics_path(rundir.run_dir(run_id))
    with open(path, "a") as f:
        f.writelines(json.dumps(r) + "\n" for r in _rows(20_000))
    reads = []
    real = rundir.read_metrics

    def spy(run, since=0, max_bytes=None):
        rows, offset = real(run, since, max_bytes)
        reads.append((since, offset))
        return rows, offset

    monkeypatch.setattr(rundir, "read_metrics", spy)
    monkeypatch.setattr(curves, "READ_CHUNK_BYTES", 64 << 10)  # the first look goes through it in pieces
    first = curves.new_rows(run_id)
    size = path.stat().st_size
    assert reads[-1] == (size, size) and len(reads) > 10  # in pieces, to the end
    assert all(b - a <= (64 << 10) for a, b in reads)
    assert len(first) < 2 * curves.MAX_STEP_POINTS + 250  # epochs + thinned steps, not 20,000 rows
    reads.clear()
    with open(path, "a") as f:  # the worker appends three steps
        f.writelines(json.dumps(_step(20_000 + i)) + "\n" for i in range(3))
    rows = curves.new_rows(run_id)
    assert reads[0][0] == size and reads[-1] == (path.stat().st_size, path.stat().st_size)
    assert sum(b - a for a, b in reads) == path.stat().st_size - size  # only the new bytes
    assert rows[-1]["step"] == 20_003
