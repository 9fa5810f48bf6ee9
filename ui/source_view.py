"""Loading the chosen source once and showing what was loaded: mapping report and layer tree."""

from __future__ import annotations

import ast
import hashlib
import json
import re
from pathlib import Path

import pandas as pd
import streamlit as st

from kt_core import rundir
from kt_core.coderef import parse_code_ref
from kt_core.config import SourceConfig
from kt_core.errors import KTError
from kt_core.settings import confine_path, get_settings
from ui.errors import error_line, plain


def upload_dir() -> Path:
    return get_settings().cache_dir / "uploads"


def save_upload(uploaded) -> Path:
    """Write an uploaded file under the cache's uploads folder: `<content hash>/<the user's name>`.

    The folder is ours (the hash), and the name keeps only the last part of what the browser
    sent, with anything but letters, digits, `._-()` and spaces replaced, so an upload can never
    choose where it lands; identical uploads share one file. Keeping the user's name means every
    message about the file (and a model file's module name) says the name the user knows.
    """
    data = uploaded.getvalue()
    digest = hashlib.sha256(data).hexdigest()[:16]
    name = re.sub(r"[^\w.\-() ]", "_", Path(str(uploaded.name).replace("\\", "/")).name).strip(" .")[:120] or "upload"
    folder = upload_dir() / digest
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    if not path.exists():
        tmp = path.with_suffix(path.suffix + ".part")
        tmp.write_bytes(data)
        tmp.replace(path)
    upload_names()[path.name] = Path(uploaded.name).name
    return path


def upload_names() -> dict[str, str]:
    """Saved upload file name -> the name the user uploaded (this session's uploads)."""
    return st.session_state.setdefault("kt_upload_names", {})


def with_upload_names(exc: KTError) -> KTError:
    """The same error, naming the user's file instead of our content-hashed copy of it."""
    for saved, original in upload_names().items():
        exc.message = exc.message.replace(str(upload_dir() / saved), original).replace(saved, original)
        exc.hint = (exc.hint or "").replace(str(upload_dir() / saved), original).replace(saved, original)
    return exc


def allowed_roots() -> tuple[Path, ...]:
    """The settings' roots plus our own uploads folder (files we wrote ourselves)."""
    return get_settings().dashboard_roots


def _stamp(cfg: SourceConfig) -> str:
    """Cache key part that changes when the file behind the config changes (a run's checkpoint
    is rewritten as it trains). For a run, the checkpoint the loader will really
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


FORMATS = {"state_dict": "state_dict", "training_dict": "training checkpoint (weights + training state)",
           "lightning": "PyTorch Lightning checkpoint", "safetensors": "safetensors", "torchscript": "TorchScript",
           "pickled_module": "pickled module (trusted)", "kt_run": "KT Studio run checkpoint",
           "torchvision_weights": "torchvision weights", "random_init": "random initialisation"}


def report_frames(report: dict) -> dict[str, pd.DataFrame]:
    """The mapping report as tables: one per non-empty category."""
    frames = {}
    for what in ("missing", "unexpected"):
        if report.get(what):
            frames[what] = pd.DataFrame({"key": report[what]})
    if report.get("mismatched"):
        frames["mismatched"] = pd.DataFrame(report["mismatched"]).astype(str)
    return frames


def show_file_facts(raw) -> None:
    """The file's format and metadata, as `inspect` prints them (a file that did not load)."""
    shown = {k: v for k, v in (raw.meta or {}).items() if isinstance(v, (int, float, str)) and len(str(v)) < 60}
    st.caption(plain(f"{raw.name} · format: {raw.format} · {len(raw.state_dict)} tensors"
                     + (" · " + ", ".join(f"{k}={v}" for k, v in list(shown.items())[:8]) if shown else "")))
    for fix in raw.fixes or []:
        st.caption(plain(f"Fixed: {fix}"))


def show_key_table(state_dict) -> None:
    """A file no registered architecture fits: its layers, listed from the keys."""
    from kt_core.sources import keys_layer_table

    rows = keys_layer_table(state_dict)
    st.markdown(f"**Layers listed from the file's keys** · {sum(r['num_parameters'] for r in rows):,} parameters")
    table = pd.DataFrame([{
        "layer": r["name"] or "(top level)", "type": r["type"], "params": int(r["num_parameters"]),
        "tensors": ", ".join(f"{leaf} {'×'.join(map(str, shape)) or 'scalar'}" for leaf, shape in r["shapes"].items()),
    } for r in rows])
    st.dataframe(table, hide_index=True,
                 column_config={"params": st.column_config.NumberColumn("parameters", format="localized")})


def show_unrun_contents(contents: dict) -> None:
    """What a refused archive holds, read without running it: its tensors, then its files."""
    tensors = contents.get("tensors") or {}
    if tensors:
        st.markdown(f"**Read from the file without running it** · {len(tensors)} tensors")
        st.dataframe(pd.DataFrame([{"name": k, "shape": "x".join(map(str, t["shape"])), "dtype": t["dtype"]}
                                   for k, t in tensors.items()]), hide_index=True)
    with st.expander(f"Files in the archive ({contents.get('num_files', 0)})"):
        st.dataframe(pd.DataFrame({"file": contents.get("files") or []}), hide_index=True)
    if contents.get("note"):
        st.caption(contents["note"])


def show_report(loaded) -> None:
    report = loaded.report.to_dict() if loaded.report is not None else {}
    n = {k: len(report.get(k) or []) for k in ("matched", "missing", "unexpected", "mismatched")}
    # The architecture as text, not a metric: a metric cuts long names ("cifar_res..." for both
    # cifar_resnet20 and cifar_resnet56).
    st.markdown(f"Architecture **{plain(loaded.arch or 'unknown')}**")
    c = st.columns(4)
    c[0].metric("Matched keys", f"{n['matched']:,}")
    c[1].metric("Missing", f"{n['missing']:,}")
    c[2].metric("Unexpected", f"{n['unexpected']:,}")
    c[3].metric("Shape mismatch", f"{n['mismatched']:,}")
    meta = loaded.meta or {}
    facts = [f"format {FORMATS.get(loaded.format, loaded.format)}",
             f"input size {tuple(loaded.input_size) if loaded.input_size else '?'}"]
    facts += [f"{k.replace('_', ' ')} {meta[k]}" for k in ("epoch", "best_prec1", "best_acc", "run_name")
              if meta.get(k) not in (None, "")]
    if len(loaded.candidates or []) > 1:
        facts.append(f"other candidates: {', '.join(loaded.candidates)}")
    st.caption(plain(" · ".join(facts)))
    for fix in report.get("fixes") or []:
        st.info(plain(f"Fixed: {fix}"))
    for note in loaded.notes or []:
        st.warning(plain(note))
    for what, frame in report_frames(report).items():
        with st.expander(f"{what} keys ({len(frame)})"):
            st.dataframe(frame, hide_index=True)


def show_layer_tree(loaded) -> None:
    from kt_core.models import count_parameters
    from kt_core.sources import layer_rows

    rows = layer_rows(loaded)  # shapes from the source's one cached trial forward pass
    total, trainable = count_parameters(loaded.model)
    # One name column: the module's full name, indented by depth (the short name repeated it).
    table = pd.DataFrame([{
        "layer": "\u2003" * int(r["depth"]) + (r["name"] or "(model)"),
        "type": r["type"], "block": r.get("block") or "",
        "params": int(r["num_parameters_total"]), "output": _shape(r.get("output_shape")),
    } for r in rows])
    st.markdown(f"**Layer tree** · {len(rows):,} modules · {total:,} parameters")
    st.dataframe(table, hide_index=True, height=min(420, 36 + 35 * len(table)),
                 column_config={"params": st.column_config.NumberColumn("parameters", format="localized")})


def _shape(shape) -> str:
    """(1, 32, 14, 14) -> "32×14×14" (the batch dimension says nothing here)."""
    if not shape:
        return ""
    dims = list(shape)[1:] if len(shape) > 1 else list(shape)
    return "×".join(str(d) for d in dims)


def code_classes(path: str) -> list[str]:
    """Class names defined at the top of a model file, read with `ast` (parsing runs nothing);
    [] when the file cannot be read or parsed (loading it then says why)."""
    try:
        tree = ast.parse(Path(path).read_text())
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return []
    return [node.name for node in tree.body if isinstance(node, ast.ClassDef)]


def model_code_inputs(current: SourceConfig) -> dict | None:
    """The user's model code beside a checkpoint: a .py (uploaded or a server path) or a module,
    the class, its constructor arguments, and corrections of the head and first layer.
    Returns the SourceConfig fields, or None until a file and class are given."""

    ref = parse_code_ref(current.arch)
    uploaded = st.file_uploader("Upload the model's code (.py)", type=["py"], key="source_code_upload")
    typed = st.text_input("...or its path on the server, or an installed module (package.module)",
                          key="source_code_path", value=ref.target if ref else "",
                          help="Confined to " + ", ".join(map(str, get_settings().allowed_roots)))
    target = str(save_upload(uploaded)) if uploaded else typed.strip()
    if not target:
        st.caption("The class that made the checkpoint: its module graph gives the head and first layer.")
        return None
    classes = []
    if target.endswith(".py"):
        try:
            classes = code_classes(str(confine_path(target, allowed_roots())))
        except KTError as exc:
            st.error(plain(error_line(exc)), icon=":material/error:")
            return None
    if classes:
        name = st.selectbox("Class", classes, key="source_code_class",
                            index=classes.index(ref.class_name) if ref and ref.class_name in classes else len(classes) - 1)
    else:
        name = st.text_input("Class name", key="source_code_class_name", value=ref.class_name if ref else "").strip()
    kwargs_text = st.text_input("Constructor arguments (JSON object)", key="source_code_kwargs",
                                value=json.dumps(current.arch_kwargs or {}))
    with st.expander("Head and first layer (found from the module graph when blank)"):
        head = st.text_input("Head module", key="source_code_head", value=current.head or "").strip()
        first = st.text_input("First conv/linear layer", key="source_code_first", value=current.first_conv or "").strip()
    try:
        kwargs = json.loads(kwargs_text or "{}")
        if not isinstance(kwargs, dict):
            raise ValueError("not an object")
    except ValueError as exc:
        st.error(f"The constructor arguments are not a JSON object ({exc}): write e.g. {{\"hidden\": 128}}")
        return None
    if not name:
        return None
    return {"arch": f"{target}:{name}", "arch_kwargs": kwargs, "head": head or None, "first_conv": first or None}
