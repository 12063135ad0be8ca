"""The open-file limit: raised at start toward what the caps need, and a cap it implies.

Every client is a file descriptor. When ``ulimit -n`` is below ``--max-connections``,
a flood makes ``accept`` fail with EMFILE: Twisted logs every failure, the HTTP port
cannot accept either (``/healthz`` dies with the game port) and anything else that
opens a file (psutil, SQLite) fails. So at start the soft limit is raised toward the
hard one, a warning names the shortfall, and the game listener keeps ``FD_HEADROOM``
descriptors in reserve for everything else (gamed.protocol.GameFactory).
"""

from __future__ import annotations

import resource
from dataclasses import dataclass

#: Descriptors kept for everything but game clients: the HTTP port and its clients,
#: SQLite files and journals, the log, the reactor, psutil's /proc reads (an idle
#: gamed holds 14).
FD_HEADROOM = 100


@dataclass(frozen=True, slots=True)
class FdLimit:
    soft: int  # after raising; resource.RLIM_INFINITY if unlimited
    hard: int
    need: int  # --max-connections + FD_HEADROOM
    raised_from: int | None = None  # the soft limit before, if it was raised

    @property
    def short(self) -> bool:
        return self.soft != resource.RLIM_INFINITY and self.soft < self.need

    @property
    def connection_cap(self) -> int:
        """Game connections the listener may hold open and keep FD_HEADROOM free."""
        if self.soft == resource.RLIM_INFINITY:
            return self.need
        return max(1, self.soft - FD_HEADROOM)

    def warning(self, max_connections: int) -> str:
        return (
            f"open-file limit {self.soft} (hard {self.hard}) is below the {self.need} that "
            f"--max-connections {max_connections} needs (+{FD_HEADROOM} for the HTTP port and "
            f"files): game connections over {self.connection_cap} will be closed at accept; "
            f"raise it (LimitNOFILE= in the systemd unit, ulimit -n)"
        )


def raise_nofile(max_connections: int) -> FdLimit:
    """Raise the soft RLIMIT_NOFILE toward the hard limit, as far as the caps need."""
    need = max_connections + FD_HEADROOM
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return FdLimit(soft, hard, need)
    target = need if hard == resource.RLIM_INFINITY else min(need, hard)
    if target <= soft:
        return FdLimit(soft, hard, need)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        return FdLimit(soft, hard, need)
    return FdLimit(target, hard, need, raised_from=soft)
