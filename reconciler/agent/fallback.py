"""Trust fallback: while the branch's tip is refused (unsigned, a key not allowed, beyond ``--policy``), the
agent keeps to the last commit this server trusted.

Guarantees:
- The commit kept to passed the trust rules (``converge.run.Trust``) when it was read: the last tip that
  passed in this run, or after a start the newest commit the journal says this host applied that still
  passes them (read again, the rules as they are now).
- A commit trusted before and refused now (a key revoked, the policy tightened) is never kept to.
- With nothing trusted to keep to, ``refused`` says so (None): the pass changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from reconciler.adapters.git import Source
from reconciler.converge.run import Trust, desired_at
from reconciler.core.model import DesiredState
from reconciler.errors import UserError
from reconciler.state.journal import Journal, JournalResult

HISTORY_LOOKED_AT = 50  # journal rows looked through for a trusted commit after a start


@dataclass
class TrustFallback:
    """The last commit that passed the trust rules, with its file, to keep to while the tip is refused."""

    trust: Trust
    ref: str
    file: str
    verified: tuple[str, DesiredState] | None = None

    def passed(self, revision: str, desired: DesiredState) -> bool:
        """``revision`` passed: it is the one kept to from now on. True when it was not already."""
        new = self.verified is None or self.verified[0] != revision
        self.verified = (revision, desired)
        return new

    def refused(
        self, revision: str, *, journal: Journal | None, source: Source | None
    ) -> tuple[str, DesiredState] | None:
        """``revision`` is refused: the commit to keep to instead, or None when nothing trusted is known."""
        if self.verified is not None and self.verified[0] == revision:
            self.verified = None  # trusted before, not now (a key revoked, the policy tightened)
        if self.verified is None and journal is not None and source is not None:
            self.verified = self._from_journal(journal, source)
        return self.verified

    def _from_journal(self, journal: Journal, source: Source) -> tuple[str, DesiredState] | None:
        """After a start: the newest commit this host applied that still passes the signature rule and the
        policy."""
        seen: set[str] = set()
        for entry in journal.history(limit=HISTORY_LOOKED_AT):
            if entry.result != JournalResult.SUCCEEDED or entry.revision in seen or not entry.revision:
                continue
            seen.add(entry.revision)
            try:
                desired = desired_at(source, self.ref, entry.revision, self.file, self.trust)
            except UserError:  # refused now, or not valid: not one to keep to (an outage stops the pass)
                continue
            return entry.revision, desired
        return None
