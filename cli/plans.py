"""Plan, then commit: how disruptive commands show their moves and ask before acting.

Every disruptive command (drain, rebalance, migrate, drills) first gets the exact moves from the
cluster (computed on a copy of the state, nothing changes), prints them with a predicted
duration, and acts only after confirmation on a terminal or with ``--yes`` in scripts.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any, Callable

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from canidae.cli.output import console, err_console, stdout_is_terminal
from canidae.core.errors import CanidaeError, InvalidInput, OperationFailed, Timeout

PlanOption = Annotated[bool, typer.Option("--plan", help="Print the exact moves and the predicted duration; change nothing.")]
YesOption = Annotated[bool, typer.Option("--yes", "-y", help="Act without asking (for scripts).")]

# Measured on 2 cores, loopback (see README): a placement's agent reports running within a few ms
# for a virtual pack; an exec pack starts within tens of ms. Agents start their shares in parallel.
START_S = {"virtual": 0.005, "exec": 0.05}


def predict_seconds(moves: list[dict[str, Any]], driver_of: Callable[[str], str] | None = None) -> float:
    per_target: dict[str, float] = {}
    for m in moves:
        driver = driver_of(m["name"]) if driver_of else "virtual"
        per_target[m.get("node") or "-"] = per_target.get(m.get("node") or "-", 0) + START_S.get(driver, 0.05)
    return round(0.05 + max(per_target.values(), default=0.0), 3)


def moves_table(moves: list[dict[str, Any]], limit: int = 50) -> Table:
    t = Table("pack", "from", "to")
    for m in moves[:limit]:
        t.add_row(m["name"], m.get("source") or "-", m.get("node") or "[yellow]pending[/]")
    if len(moves) > limit:
        t.add_row(f"... {len(moves) - limit} more", "", "")
    return t


def confirm(question: str, yes: bool) -> None:
    """Go on when --yes, or when a person at a terminal says yes; refuse in scripts without --yes."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise InvalidInput(f"{question} Refusing without --yes (stdin is not a terminal)")
    if not typer.confirm(question, default=False, err=True):
        raise OperationFailed("cancelled")


def wait_until(done: Callable[[], tuple[int, int]], timeout: float, what: str) -> float:
    """Poll ``done() -> (finished, total)`` until finished == total; a progress bar on a terminal.

    An error answer ends the wait at once (the user hears it now, not after the timeout)."""
    from canidae.agent.ops.waiting import Abandon, seconds_until
    progress = Progress(TextColumn(what), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                        TimeElapsedColumn(), console=err_console, transient=True,
                        disable=not stdout_is_terminal())
    left = [0, 0]
    with progress:
        task = progress.add_task(what, total=None)

        def finished() -> bool:
            try:
                left[:] = done()
            except CanidaeError as e:
                raise Abandon(e) from None
            progress.update(task, completed=left[0], total=max(left[1], 1))
            return left[0] >= left[1]
        try:
            return seconds_until(finished, timeout, what, interval=0.05)
        except Timeout:
            raise Timeout(f"{what}: {left[1] - left[0]} of {left[1]} not done after {timeout:g} s") from None


__all__ = ["PlanOption", "YesOption", "predict_seconds", "moves_table", "confirm", "wait_until", "console"]
