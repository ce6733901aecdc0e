"""Errors and skip bookkeeping for data readers: every bad record is named, none is dropped silently."""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import List, Optional

from asmnet_jax.errors import AsmnetError

log = logging.getLogger(__name__)


class DataError(AsmnetError, ValueError):
    """Bad input data; the message starts with ``path[:line]``."""

    def __init__(self, path, message: str, line: Optional[int] = None):
        self.path = os.fspath(path)
        self.line = line
        self.reason = message
        where = self.path if line is None else f"{self.path}:{line}"
        super().__init__(f"{where}: {message}")


class MissingSplit(DataError):
    """A split with nothing to read: its folders or list file are absent, or no face belongs to
    it. Dataset builders skip such splits (and say so); every other DataError stops them."""


@dataclasses.dataclass
class SkipLog:
    """Records the bad records a reader skipped when the user asked it to skip them.

    Readers take ``skip_bad=False`` by default and raise :class:`DataError`; with
    ``skip_bad=True`` they call :meth:`add` for each bad record and go on. The caller reports
    :meth:`summary` (the reader logs a warning for each skip, too).
    """

    errors: List[DataError] = dataclasses.field(default_factory=list)

    def add(self, error: DataError) -> None:
        self.errors.append(error)
        log.warning("skipped bad record: %s", error)

    @property
    def count(self) -> int:
        return len(self.errors)

    def summary(self) -> str:
        if not self.errors:
            return "no records skipped"
        lines = [f"{self.count} bad record(s) skipped:"]
        lines += [f"  {error}" for error in self.errors]
        return "\n".join(lines)
