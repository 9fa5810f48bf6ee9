"""User-facing errors.

Every problem a user can cause (a bad file, an unknown name, a missing dataset) is raised as a
`KTError`: a one-line message that names the problem, plus a `hint` that names the fix. The CLI
prints `error: <message> (<hint>)` on stderr and exits non-zero; the UI shows it with `st.error`
and keeps any traceback in an expander. Anything that is *not* a KTError is a bug.
"""

from __future__ import annotations


class KTError(Exception):
    """A problem with the user's input, with the fix in `hint`."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class ConfigError(KTError):
    """An invalid or inconsistent run configuration."""


class CheckpointError(KTError):
    """A checkpoint file that cannot be read: missing, empty, truncated, not a checkpoint."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint that needs arbitrary code to load; loading it needs an explicit opt-in.

    `contents` is what could be learnt without running it (a TorchScript archive's files and
    tensors), or None."""

    contents: dict | None = None


class DatasetError(KTError):
    """A dataset that cannot be found, read or used as asked."""


class DeviceError(KTError):
    """A device that was asked for but is not available."""


class SettingsError(KTError):
    """A deployment setting (environment variable) that cannot be used."""


class PathError(KTError):
    """A path the OS cannot use: a NUL byte, too long, a symlink loop."""


class PathNotAllowedError(KTError):
    """A path typed into the UI that lies outside the configured roots."""


class TrustNotAllowedError(KTError):
    """A dashboard config that trusts a file (runs its code) on a server with KT_ALLOW_TRUST=0."""


class RunError(KTError):
    """A run folder that is missing, corrupt, or in a state that forbids the action."""


class AmbiguousRunError(RunError):
    """A run id prefix that several runs share."""


class RunBusyError(RunError):
    """A run folder whose lock another process holds: its worker, or a launcher starting one."""


class UserCodeError(KTError):
    """User model code that cannot be found, imported or used as an architecture."""


class UntrustedCodeError(UnsafeCheckpointError):
    """User model code named without the trust opt-in (importing it would run it)."""
