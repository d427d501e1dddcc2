"""How long a 401/403 from the API server is retried before it counts: shared by kubessh and the
launcher's pod watch, so both treat a denial alike.

A denial is final quickly while these credentials have never been accepted (a missing Role should be
reported at once), and only after longer once they have been (an API server that has just restarted
denies everyone until its authorization caches are filled)."""

from __future__ import annotations

from dataclasses import dataclass, field

BEFORE_ACCEPTED_S = 2.0
AFTER_ACCEPTED_S = 15.0


@dataclass
class DenialGrace:
    before_accepted_s: float = BEFORE_ACCEPTED_S
    after_accepted_s: float = AFTER_ACCEPTED_S
    accepted: bool = False  # the API has answered these credentials once
    denied_since: float | None = field(default=None)

    def allowed(self) -> None:
        """An answer that was not a denial."""
        self.accepted, self.denied_since = True, None

    def final(self, now: float) -> bool:
        """A denial at ``now``: whether it is final (it has lasted the grace)."""
        if self.denied_since is None:
            self.denied_since = now
        grace = self.after_accepted_s if self.accepted else self.before_accepted_s
        return now - self.denied_since >= grace

    def remaining(self, now: float) -> float:
        """Seconds of grace left for the denial under way."""
        since = now if self.denied_since is None else self.denied_since
        return (self.after_accepted_s if self.accepted else self.before_accepted_s) - (now - since)
