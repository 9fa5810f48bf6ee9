"""Loading the chosen source once and showing what was loaded: mapping report and layer tree."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import streamlit as st

from kt_core import rundir
from kt_core.config import SourceConfig
from kt_core.errors import KTError
from kt_core.settings import get_settings


def upload_dir() -> Path:
    return get_settings().cache_dir / "uploads"


def save_upload(uploaded) -> Path:
    """Write an uploaded file under the cache's uploads folder, named by content hash.

    The name is ours (hash + the original suffix only), so an upload can never choose where it
    lands; identical uploads share one file.
    """
    data = uploaded.getvalue()
    digest = hashlib.sha256(data).hexdigest()[:16]
    suffix = "".join(Path(uploaded.name).suffixes[-2:])[:16]
    folder = upload_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{digest}{suffix}"
    if not path.exists():
        tmp = path.with_suffix(path.suffix + ".part")
        tmp.write_bytes(data)
        tmp.replace(path)
    return path


def allowed_roots() -> tuple[Path, ...]:
    """The settings' roots plus our own uploads folder (files we wrote ourselves)."""
    return get_settings().allowed_roots + (upload_dir().resolve(),)


def _stamp(cfg: SourceConfig) -> str:
    """Cache key part that changes when the file behind the config changes (a run's checkpoint
    is rewritten every epoch while it trains). For a run, the checkpoint the loader will really
    use (`rundir.stamp`: best.pt, else last.pt, named in the key as it may switch)."""
    try:
        if cfg.kind == "run" and cfg.path:
            return rundir.stamp(cfg.path, cfg.checkpoint) or "missing"
        if cfg.kind != "file" or not cfg.path:
            return ""
        path = Path(cfg.path).expanduser()
        stat = path.stat()
        return f"{path.name}:{stat.st_mtime_ns}:{stat.st_size}"
    except (OSError, KTError):
        return "missing"  # load_source says what is wrong


@st.cache_resource(max_entries=4, show_spinner="Loading the source model...")
def _load(cfg_json: str, stamp: str, roots: tuple[Path, ...]):
    from kt_core.sources import load_source

    return load_source(SourceConfig(**json.loads(cfg_json)), roots=roots)


def load(cfg: SourceConfig):
    """`kt_core.sources.load_source` for the UI: confined to the allowed roots, cached.

    The cached LoadedSource is shared: callers that change the model (freezing, re-init) work
    on a copy.
    """
    cfg.validate()
    return _load(json.dumps(cfg.__dict__, sort_keys=True), _stamp(cfg), allowed_roots())


def report_frames(report: dict) -> dict[str, pd.DataFrame]:
    """The mapping report as tables: one per non-empty category."""
    frames = {}
    for what in ("missing", "unexpected"):
        if report.get(what):
            frames[what] = pd.DataFrame({"key": report[what]})
    if report.get("mismatched"):
        frames["mismatched"] = pd.DataFrame(report["mismatched"]).astype(str)
    return frames


def show_key_table(state_dict) -> None:
    """A file no registered architecture fits: its layers, listed from the keys."""
    from kt_core.sources import keys_layer_table

    rows = keys_layer_table(state_dict)
    st.markdown(f"**Layers listed from the file's keys** · {sum(r['num_parameters'] for r in rows):,} parameters")
    st.dataframe(pd.DataFrame(rows).astype({"name": str}), hide_index=True)


def show_report(loaded) -> None:
    report = loaded.report.to_dict() if loaded.report is not None else {}
    n = {k: len(report.get(k) or []) for k in ("matched", "missing", "unexpected", "mismatched")}
    c = st.columns(5)
    c[0].metric("Architecture", loaded.arch or "unknown")
    c[1].metric("Matched keys", n["matched"])
    c[2].metric("Missing", n["missing"])
    c[3].metric("Unexpected", n["unexpected"])
    c[4].metric("Shape mismatch", n["mismatched"])
    st.caption(f"Format: {loaded.format} · input size {tuple(loaded.input_size) if loaded.input_size else '?'}"
               + (f" · other candidates: {', '.join(loaded.candidates)}" if len(loaded.candidates or []) > 1 else ""))
    for fix in report.get("fixes") or []:
        st.info(f"Fixed: {fix}")
    for note in loaded.notes or []:
        st.warning(note)
    for what, frame in report_frames(report).items():
        with st.expander(f"{what} keys ({len(frame)})"):
            st.dataframe(frame, hide_index=True)


def show_layer_tree(loaded) -> None:
    from kt_core.models import count_parameters
    from kt_core.sources import layer_rows

    rows = layer_rows(loaded)  # shapes from the source's one cached trial forward pass
    total, trainable = count_parameters(loaded.model)
    table = pd.DataFrame([{
        "layer": "\u2003" * int(r["depth"]) + (r["name"].rsplit(".", 1)[-1] or "(model)"),
        "name": r["name"], "type": r["type"], "block": r.get("block") or "",
        "params": int(r["num_parameters_total"]), "output": str(r.get("output_shape") or ""),
    } for r in rows])
    st.markdown(f"**Layer tree** · {len(rows)} modules · {total:,} parameters")
    st.dataframe(table, hide_index=True, height=min(420, 36 + 35 * len(table)),
                 column_config={"params": st.column_config.NumberColumn(format="%d")})
