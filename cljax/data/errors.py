"""Errors raised by :mod:`cljax.data`."""

from __future__ import annotations

from collections.abc import Sequence


class DataNotFoundError(FileNotFoundError):
    """No complete copy of a dataset was found; ``attempts`` lists every place tried and why it failed."""

    def __init__(self, message: str, attempts: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.attempts = list(attempts)

    def __str__(self) -> str:
        return str(self.args[0])


class CorruptDataError(ValueError):
    """A dataset file exists but is broken (bad magic, truncated, bad gzip, checksum mismatch...)."""
