"""One way to show a failure: a readable line on the page, the details folded away.

A `KTError` already names the problem and the fix, so the user sees exactly that. Anything
else is a bug in KT Studio: the user still gets one line (and the app keeps working), and the
traceback waits in an expander for the bug report.
"""

from __future__ import annotations

import logging
import re
import traceback

import streamlit as st

from kt_core.errors import KTError

log = logging.getLogger(__name__)


_MARKDOWN = re.compile(r"([\\`*_\[\]<>#~|$])")


def plain(text: str) -> str:
    """`text` shown as written: Streamlit reads messages as Markdown, where `__main__.CNN` turns
    bold and `ROOT/<class>/*.jpg` italic (and `<class>` vanishes as HTML). The characters that
    mark up inline text are escaped; punctuation that only matters at a line's start stays."""
    return _MARKDOWN.sub(r"\\\1", str(text))


def error_line(exc: BaseException) -> str:
    """The one line a user reads: message and hint for a KTError, the exception type otherwise."""
    if isinstance(exc, KTError):
        return f"{exc.message} — {exc.hint}" if exc.hint else exc.message
    return (f"Unexpected error ({type(exc).__name__}: {exc}). This is a bug in KT Studio; "
            "the details below help to report it.")


def show_error(exc: BaseException, where: str | None = None) -> None:
    """`st.error` with the readable line; the traceback (if any) in a closed expander."""
    if not isinstance(exc, KTError):
        log.exception("unexpected error in the UI", exc_info=exc)
    prefix = f"{where}: " if where else ""
    st.error(plain(prefix + error_line(exc)), icon=":material/error:")
    details = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    with st.expander("Details"):
        st.code(details, language="text")


class guard:
    """`with guard("Loading the source"):` shows any exception with `show_error` and swallows it.

    `ok` tells the caller afterwards whether the block finished, so a page can stop drawing the
    parts that need its result. Streamlit's own control-flow exceptions (rerun, stop) pass through.
    """

    def __init__(self, where: str | None = None):
        self.where = where
        self.ok = False

    def __enter__(self) -> "guard":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is None:
            self.ok = True
            return False
        if not isinstance(exc, Exception):  # st.rerun/st.stop raise BaseExceptions: let them pass
            return False
        show_error(exc, self.where)
        return True

