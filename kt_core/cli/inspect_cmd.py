"""Placeholder until this command group lands (replaced in the same session)."""


def register(subparsers) -> None:
    pass
