"""The parameters of a live scale test (``LivePlan``, validated by ``check``) and the progress callback
type.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from canidae.core import scaleplan
from canidae.core.errors import InvalidInput

# progress(phase, done, total): called as a run advances (a progress bar, or nothing).
Progress = Callable[[str, float, float], None]


def no_progress(phase: str, done: float, total: float) -> None:
    pass


@dataclass(frozen=True)
class LivePlan:
    """The parameters of a live run (validated by ``check``)."""

    packs: int
    clients: int
    servers: int = 3
    zones: int = 3
    chaos: bool = False
    kill: int = 5  # client agents killed by the chaos phase
    ramp: bool = False
    duration_s: float = 60.0
    seed: int = 0
    batch: int = 100  # packs per bulk request
    rate: float = 0.0  # packs per second while spawning; 0: as fast as the cluster answers
    node_packs: int = 50_000
    data_dir: str | None = None  # a cluster started by 'cluster up'; None: a throwaway one
    base_port: int | None = None
    timeout_s: float = 120.0  # for each wait (start, settle, recovery)
    load_connections: int = 4

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def ramp_s(self) -> float:
        return self.duration_s * 0.5 if self.ramp else 0.0

    @property
    def steady_s(self) -> float:
        return min(60.0, max(2.0, self.duration_s * 0.15))

    @property
    def load_s(self) -> float:
        return max(2.0, self.duration_s - self.ramp_s - self.steady_s)

    @property
    def spawn_rate(self) -> float:
        """Packs per second while spawning: ``rate``, else spread over the ramp, else no pacing (0)."""
        if self.rate:
            return self.rate
        return self.packs / self.ramp_s if self.ramp_s else 0.0

    def check(self) -> LivePlan:
        if self.data_dir is None:
            scaleplan.check_counts(self.packs, self.clients, 1, what_nodes="--nodes (client agents)")
            if self.servers not in (1, 3, 5, 7):
                raise InvalidInput(f"--servers must be 1, 3, 5 or 7 (an odd Raft group), got {self.servers}")
            if self.clients > 200:
                raise InvalidInput(
                    f"--nodes (client agents) must be at most 200 on one machine, got {self.clients}"
                )
            if self.zones < 1:
                raise InvalidInput(f"--zones must be at least 1, got {self.zones}")
            scaleplan.check_capacity(self.packs, self.servers + self.clients, self.node_packs)
        elif self.packs < 1:
            raise InvalidInput(f"--packs must be at least 1, got {self.packs}")
        if self.chaos and self.kill < 1:
            raise InvalidInput(f"--kill must be at least 1 with --chaos, got {self.kill}")
        if self.chaos and self.data_dir is None and self.kill > self.clients:
            raise InvalidInput(f"--kill ({self.kill}) cannot exceed the client agents ({self.clients})")
        if self.batch < 1:
            raise InvalidInput(f"--batch must be at least 1, got {self.batch}")
        if self.rate < 0:
            raise InvalidInput(f"--rate must not be negative, got {self.rate}")
        if self.duration_s <= 0:
            raise InvalidInput(f"--duration must be positive, got {self.duration_s:g}")
        if self.node_packs < 1:
            raise InvalidInput(f"--node-packs must be at least 1, got {self.node_packs}")
        return self
