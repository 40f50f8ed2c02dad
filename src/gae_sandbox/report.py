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
        self._lock = threading.RLock()  # a finalizer run by the collector may record
        self._by_key: dict[tuple[str, str, str], Violation] = {}

    def record(self, violation: Violation, *, by_library: bool = False) -> bool:
        """Add ``violation``; return True if it is new (first time at this location).

        Logged once: a warning when enforced, info when report mode let it through, and
        debug when third-party library code made the call (``by_library``): such refusals
        are usually expected and swallowed by the library, and stay in the record."""
        key = (violation.kind, violation.target, violation.location)
        with self._lock:
            known = self._by_key.get(key)
            if known is not None:
                known.count += 1
                return False
            self._by_key[key] = violation
        if by_library:
            level = logging.DEBUG
        else:
            level = logging.WARNING if violation.enforced else logging.INFO
        logger.log(level, "%s at %s", violation.message, violation.location)
        return True

    @property
    def violations(self) -> list[Violation]:
        with self._lock:
            return list(self._by_key.values())

    def snapshot(self) -> list[Violation]:
        """The violations so far (the same objects; callers copy what they hand out)."""
        return self.violations

    def clear(self) -> None:
        with self._lock:
            self._by_key.clear()


def merge(*groups: list[Violation]) -> list[Violation]:
    """One list from several reports (worker processes, sandboxes): counts added up."""
    merged: dict[tuple[str, str, str], Violation] = {}
    for group in groups:
        for violation in group:
            key = (violation.kind, violation.target, violation.location)
            known = merged.get(key)
            if known is None:
                merged[key] = Violation(**violation.to_dict())  # type: ignore[arg-type]
            else:
                known.count += violation.count
    return list(merged.values())


def to_json_document(violations: list[Violation]) -> dict[str, object]:
    """The ``--report FILE`` document: every violation, and counts per kind."""
    ordered = sorted(violations, key=lambda v: (v.kind, v.location, v.target))
    summary: dict[str, int] = {}
    for violation in ordered:
        summary[violation.kind] = summary.get(violation.kind, 0) + violation.count
    return {"violations": [v.to_dict() for v in ordered], "summary": summary}


def from_json_document(document: object) -> list[Violation]:
    """Violations back from :func:`to_json_document` output (malformed entries skipped)."""
    if not isinstance(document, dict) or not isinstance(document.get("violations"), list):
        return []
    names = set(Violation.__dataclass_fields__)
    result = []
    for entry in document["violations"]:
        if isinstance(entry, dict) and names <= set(entry):
            try:
                result.append(Violation(**{k: entry[k] for k in names}))
            except TypeError:
                continue
    return result


def format_summary(violations: list[Violation]) -> str:
    """A short text summary grouped by kind: counts, and the first location of each target."""
    if not violations:
        return "gae_sandbox: no violations"
    by_kind: dict[str, list[Violation]] = {}
    for violation in sorted(violations, key=lambda v: (v.kind, v.location)):
        by_kind.setdefault(violation.kind, []).append(violation)
    total = sum(v.count for v in violations)
    lines = [f"gae_sandbox: {total} violation(s), {len(violations)} distinct"]
    for kind, items in sorted(by_kind.items()):
        lines.append(f"  {kind}: {sum(v.count for v in items)}")
        firsts: dict[str, Violation] = {}
        for item in items:
            firsts.setdefault(item.target, item)
        for target, item in firsts.items():
            how = f"Policy.{item.setting}" if item.setting else "no setting allows it"
            lines.append(f"    {target}  (first at {item.location}; {how})")
    return "\n".join(lines)
