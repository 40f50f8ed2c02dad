"""Violation records: the migration list a user works through.

Each distinct violation (kind, target, location) is kept once with a count. Enforced refusals
are recorded too, so a refusal the app swallowed with ``except Exception`` is still visible.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import asdict, dataclass

logger = logging.getLogger("gae_sandbox")


@dataclass
class Violation:
    """One distinct violation: what was done, where in the app, and what would allow it."""

    kind: str
    target: str
    location: str
    rule: str
    setting: str | None
    message: str
    enforced: bool
    count: int = 1

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class Report:
    """Thread-safe, de-duplicated list of violations for one :class:`Sandbox` object."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_key: dict[tuple[str, str, str], Violation] = {}

    def record(self, violation: Violation) -> bool:
        """Add ``violation``; return True if it is new (first time at this location)."""
        key = (violation.kind, violation.target, violation.location)
        with self._lock:
            known = self._by_key.get(key)
            if known is not None:
                known.count += 1
                return False
            self._by_key[key] = violation
        level = logging.WARNING if violation.enforced else logging.INFO
        logger.log(level, "%s at %s", violation.message, violation.location)
        return True

    @property
    def violations(self) -> list[Violation]:
        with self._lock:
            return list(self._by_key.values())

    def clear(self) -> None:
        with self._lock:
            self._by_key.clear()
