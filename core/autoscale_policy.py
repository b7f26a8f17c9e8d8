"""The autoscaling policy: every number the autoscaler decides by, validated, with TOML as its text form.

This module owns the ``Policy`` value and its parts, their defaults and their checks. The defaults
are the seed's numbers (scale up at 70 % CPU and down at 30 %; up at 80 % memory and down at 40 %;
50 packs per node; 3..1000 nodes; a 5-minute cooldown) plus the settings the seed leaves open,
each borrowed from a system that has run it for years (the tolerance and the scale-down window
from the Kubernetes HPA, the "most capacity wins" rule from the Nomad Autoscaler).

It reads and writes text (``from_toml`` / ``to_toml``) but never files: the caller brings the
document. ``from_dict`` refuses unknown keys and wrong values with ``InvalidInput`` naming the
field (``cpu.up``), so a typo in a policy file is an error, not a silently ignored setting.

The TOML layout, every key optional::

    evaluation_interval_s = 10      cooldown_s = 300      tolerance = 0.1
    metrics_max_age_s = 60          dry_run = false       paused = false
    [nodes]       min = 3, max = 1000
    [cpu]         up = 70.0, down = 30.0        (percent of the ready nodes' capacity)
    [memory]      up = 80.0, down = 40.0
    [packs]       per_node = 50
    [scale_down]  window_s = 300
    [scale_up]    max_per_step = 500, period_s = 60, max_nodes_per_period = 10,
                  max_percent_per_period = 100.0, select = "max"
    [forecast]    mode = "forecast-only", season_s = 86400, sample_interval_s = 300,
                  horizon_s = 3600, history_seasons = 3, fit = false,
                  alpha = 0.2, beta = 0.0, gamma = 0.1
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar

import tomli_w
from canidae.core.errors import InvalidInput

# A season longer than this many samples would make the kept history (and every fit) large.
MAX_SEASON_SAMPLES = 4032
MAX_HISTORY_SEASONS = 8

_E = TypeVar("_E", bound=StrEnum)


class ForecastMode(StrEnum):
    OFF = "off"                      # not computed
    FORECAST_ONLY = "forecast-only"  # computed and shown, never acts
    ACT = "act"                      # its proposal competes with the checks (it can only add)


class Select(StrEnum):
    MAX = "max"  # the scale-up limit that allows the most change applies (the HPA default)
    MIN = "min"  # the one that allows the least


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Utilisation bounds in percent: above ``up`` add nodes, below ``down`` remove some.

    Between the two the check holds (Nomad's ``within_bounds_trigger``). A check that acts aims at
    ``target``, the midpoint, so that after acting the load sits as far from both bounds as it can
    and needs to move by a wide margin before the next action.
    """

    up: float
    down: float

    @property
    def target(self) -> float:
        return (self.up + self.down) / 2.0


@dataclass(frozen=True, slots=True)
class ScaleUpLimits:
    """How fast nodes may be added (the HPA's scale-up policies).

    Within any ``period_s``, the count may grow by ``max_nodes_per_period`` nodes or by
    ``max_percent_per_period`` percent of the count at the start of the period; ``select`` says
    whether the larger or the smaller of the two applies. One action never adds more than
    ``max_per_step``.
    """

    max_per_step: int = 500
    period_s: int = 60
    max_nodes_per_period: int = 10
    max_percent_per_period: float = 100.0
    select: Select = Select.MAX


@dataclass(frozen=True, slots=True)
class ForecastSettings:
    """The Holt-Winters forecast: how samples are taken, what season, how far ahead, which parameters.

    Metrics are folded into one sample (the peak) per ``sample_interval_s``; the model needs two
    full seasons of samples before it forecasts and keeps ``history_seasons`` of them. With
    ``fit`` the smoothing parameters are fitted on the history (once per season of new samples);
    without it ``alpha``, ``beta`` and ``gamma`` are used as given.
    """

    mode: ForecastMode = ForecastMode.FORECAST_ONLY
    season_s: int = 86_400
    sample_interval_s: int = 300
    horizon_s: int = 3_600
    history_seasons: int = 3
    fit: bool = False
    alpha: float = 0.2
    beta: float = 0.0
    gamma: float = 0.1

    @property
    def season_samples(self) -> int:
        return self.season_s // self.sample_interval_s

    @property
    def horizon_samples(self) -> int:
        return self.horizon_s // self.sample_interval_s


@dataclass(frozen=True, slots=True)
class Policy:
    """Everything the autoscaler decides by. The defaults are the seed's numbers."""

    cpu: Thresholds = field(default_factory=lambda: Thresholds(up=70.0, down=30.0))
    memory: Thresholds = field(default_factory=lambda: Thresholds(up=80.0, down=40.0))
    packs_per_node: int = 50
    min_nodes: int = 3
    max_nodes: int = 1000
    cooldown_s: int = 300
    tolerance: float = 0.1
    scale_down_window_s: int = 300
    scale_up: ScaleUpLimits = field(default_factory=ScaleUpLimits)
    evaluation_interval_s: int = 10
    metrics_max_age_s: int = 60
    forecast: ForecastSettings = field(default_factory=ForecastSettings)
    dry_run: bool = False
    paused: bool = False

    def __post_init__(self) -> None:
        # Validate through the one path that names fields, so a Policy built in code is held to
        # the same rules as one read from a file.
        _check_policy(self)

    def to_dict(self) -> dict[str, Any]:
        """The nested, TOML-shaped form (every key present)."""
        f = self.forecast
        return {
            "evaluation_interval_s": self.evaluation_interval_s,
            "cooldown_s": self.cooldown_s,
            "tolerance": self.tolerance,
            "metrics_max_age_s": self.metrics_max_age_s,
            "dry_run": self.dry_run,
            "paused": self.paused,
            "nodes": {"min": self.min_nodes, "max": self.max_nodes},
            "cpu": {"up": self.cpu.up, "down": self.cpu.down},
            "memory": {"up": self.memory.up, "down": self.memory.down},
            "packs": {"per_node": self.packs_per_node},
            "scale_down": {"window_s": self.scale_down_window_s},
            "scale_up": {
                "max_per_step": self.scale_up.max_per_step,
                "period_s": self.scale_up.period_s,
                "max_nodes_per_period": self.scale_up.max_nodes_per_period,
                "max_percent_per_period": self.scale_up.max_percent_per_period,
                "select": self.scale_up.select.value,
            },
            "forecast": {
                "mode": f.mode.value, "season_s": f.season_s, "sample_interval_s": f.sample_interval_s,
                "horizon_s": f.horizon_s, "history_seasons": f.history_seasons, "fit": f.fit,
                "alpha": f.alpha, "beta": f.beta, "gamma": f.gamma,
            },
        }

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> Policy:
        """Build from the nested form; missing keys take their defaults, unknown keys are refused."""
        r = _Reader(d, "")
        nodes = r.table("nodes", ("min", "max"))
        cpu = r.table("cpu", ("up", "down"))
        mem = r.table("memory", ("up", "down"))
        packs = r.table("packs", ("per_node",))
        down = r.table("scale_down", ("window_s",))
        up = r.table("scale_up", ("max_per_step", "period_s", "max_nodes_per_period",
                                  "max_percent_per_period", "select"))
        fc = r.table("forecast", ("mode", "season_s", "sample_interval_s", "horizon_s", "history_seasons",
                                  "fit", "alpha", "beta", "gamma"))
        r.refuse_unknown(("evaluation_interval_s", "cooldown_s", "tolerance", "metrics_max_age_s", "dry_run",
                          "paused", "nodes", "cpu", "memory", "packs", "scale_down", "scale_up", "forecast"))
        base = Policy()
        bu, bf = base.scale_up, base.forecast
        return Policy(
            cpu=Thresholds(cpu.number("up", base.cpu.up), cpu.number("down", base.cpu.down)),
            memory=Thresholds(mem.number("up", base.memory.up), mem.number("down", base.memory.down)),
            packs_per_node=packs.integer("per_node", base.packs_per_node),
            min_nodes=nodes.integer("min", base.min_nodes),
            max_nodes=nodes.integer("max", base.max_nodes),
            cooldown_s=r.integer("cooldown_s", base.cooldown_s),
            tolerance=r.number("tolerance", base.tolerance),
            scale_down_window_s=down.integer("window_s", base.scale_down_window_s),
            scale_up=ScaleUpLimits(
                max_per_step=up.integer("max_per_step", bu.max_per_step),
                period_s=up.integer("period_s", bu.period_s),
                max_nodes_per_period=up.integer("max_nodes_per_period", bu.max_nodes_per_period),
                max_percent_per_period=up.number("max_percent_per_period", bu.max_percent_per_period),
                select=up.choice("select", Select, bu.select),
            ),
            evaluation_interval_s=r.integer("evaluation_interval_s", base.evaluation_interval_s),
            metrics_max_age_s=r.integer("metrics_max_age_s", base.metrics_max_age_s),
            forecast=ForecastSettings(
                mode=fc.choice("mode", ForecastMode, bf.mode),
                season_s=fc.integer("season_s", bf.season_s),
                sample_interval_s=fc.integer("sample_interval_s", bf.sample_interval_s),
                horizon_s=fc.integer("horizon_s", bf.horizon_s),
                history_seasons=fc.integer("history_seasons", bf.history_seasons),
                fit=fc.boolean("fit", bf.fit),
                alpha=fc.number("alpha", bf.alpha),
                beta=fc.number("beta", bf.beta),
                gamma=fc.number("gamma", bf.gamma),
            ),
            dry_run=r.boolean("dry_run", base.dry_run),
            paused=r.boolean("paused", base.paused),
        )

    @staticmethod
    def from_toml(text: str) -> Policy:
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise InvalidInput(f"autoscale policy is not valid TOML: {e}") from None
        return Policy.from_dict(doc)

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())


class _Reader:
    """Reads typed values from one table of a policy document, naming ``prefix.key`` in errors."""

    def __init__(self, d: object, prefix: str) -> None:
        if not isinstance(d, Mapping):
            raise InvalidInput(f"autoscale policy: {prefix.rstrip('.') or 'document'} must be a table")
        self.d, self.prefix = d, prefix

    def _name(self, key: str) -> str:
        return f"{self.prefix}{key}"

    def table(self, key: str, allowed: tuple[str, ...]) -> _Reader:
        sub = _Reader(self.d.get(key, {}), f"{self.prefix}{key}.")
        sub.refuse_unknown(allowed)
        return sub

    def refuse_unknown(self, allowed: tuple[str, ...]) -> None:
        unknown = sorted(str(k) for k in self.d if k not in allowed)
        if unknown:
            raise InvalidInput(f"autoscale policy: unknown field {self._name(unknown[0])!r} "
                               f"(known here: {', '.join(allowed)})")

    def integer(self, key: str, default: int) -> int:
        v = self.d.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int):
            raise InvalidInput(f"autoscale policy: {self._name(key)} must be an integer, got {v!r}")
        return v

    def number(self, key: str, default: float) -> float:
        v = self.d.get(key, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise InvalidInput(f"autoscale policy: {self._name(key)} must be a number, got {v!r}")
        return float(v)

    def boolean(self, key: str, default: bool) -> bool:
        v = self.d.get(key, default)
        if not isinstance(v, bool):
            raise InvalidInput(f"autoscale policy: {self._name(key)} must be true or false, got {v!r}")
        return v

    def choice(self, key: str, enum: type[_E], default: _E) -> _E:
        v = self.d.get(key, default.value)
        try:
            return enum(v)
        except ValueError:
            options = ", ".join(repr(e.value) for e in enum)
            raise InvalidInput(f"autoscale policy: {self._name(key)} must be one of {options}, got {v!r}") from None


def _fail(name: str, rule: str, value: object) -> InvalidInput:
    return InvalidInput(f"autoscale policy: {name} must be {rule}, got {value!r}")


def _int_at_least(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise _fail(name, f"an integer >= {low}", value)


def _num_in(name: str, value: object, low: float, high: float, rule: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise _fail(name, rule, value)


def _check_thresholds(name: str, t: object) -> None:
    if not isinstance(t, Thresholds):
        raise _fail(name, "up and down thresholds", t)
    _num_in(f"{name}.up", t.up, 0.0, 100.0, "a percentage in (0, 100]")
    _num_in(f"{name}.down", t.down, 0.0, 100.0, "a percentage in [0, 100)")
    if not t.down < t.up:
        raise InvalidInput(f"autoscale policy: {name}.down ({t.down}) must be below {name}.up ({t.up})")


def _check_policy(p: Policy) -> None:
    _check_thresholds("cpu", p.cpu)
    _check_thresholds("memory", p.memory)
    _int_at_least("packs.per_node", p.packs_per_node, 1)
    _int_at_least("nodes.min", p.min_nodes, 0)
    _int_at_least("nodes.max", p.max_nodes, 1)
    if p.max_nodes < p.min_nodes:
        raise InvalidInput(f"autoscale policy: nodes.max ({p.max_nodes}) must be at least nodes.min ({p.min_nodes})")
    _int_at_least("cooldown_s", p.cooldown_s, 0)
    # A tolerance of 1 or more would forbid every action of a target-value check.
    _num_in("tolerance", p.tolerance, 0.0, 0.99, "a number in [0, 0.99]")
    _int_at_least("scale_down.window_s", p.scale_down_window_s, 0)
    _int_at_least("evaluation_interval_s", p.evaluation_interval_s, 1)
    _int_at_least("metrics_max_age_s", p.metrics_max_age_s, 1)
    for name in ("dry_run", "paused"):
        if not isinstance(getattr(p, name), bool):
            raise _fail(name, "true or false", getattr(p, name))
    u = p.scale_up
    if not isinstance(u, ScaleUpLimits):
        raise _fail("scale_up", "a scale-up limits table", u)
    _int_at_least("scale_up.max_per_step", u.max_per_step, 1)
    _int_at_least("scale_up.period_s", u.period_s, 1)
    _int_at_least("scale_up.max_nodes_per_period", u.max_nodes_per_period, 0)
    _num_in("scale_up.max_percent_per_period", u.max_percent_per_period, 0.0, 10_000.0,
            "a percentage in [0, 10000]")
    if not isinstance(u.select, Select):
        raise _fail("scale_up.select", "'max' or 'min'", u.select)
    if u.max_nodes_per_period == 0 and u.max_percent_per_period == 0:
        raise InvalidInput("autoscale policy: scale_up allows no growth at all "
                           "(max_nodes_per_period and max_percent_per_period are both 0)")
    _check_forecast(p.forecast)


def _check_forecast(f: object) -> None:
    if not isinstance(f, ForecastSettings):
        raise _fail("forecast", "a forecast table", f)
    if not isinstance(f.mode, ForecastMode):
        raise _fail("forecast.mode", "'off', 'forecast-only' or 'act'", f.mode)
    _int_at_least("forecast.sample_interval_s", f.sample_interval_s, 1)
    _int_at_least("forecast.season_s", f.season_s, 2 * f.sample_interval_s)
    if f.season_s % f.sample_interval_s:
        raise _fail("forecast.season_s", f"a multiple of sample_interval_s ({f.sample_interval_s})", f.season_s)
    if f.season_samples > MAX_SEASON_SAMPLES:
        raise _fail("forecast.season_s", f"at most {MAX_SEASON_SAMPLES} samples of sample_interval_s",
                    f.season_s)
    _int_at_least("forecast.horizon_s", f.horizon_s, f.sample_interval_s)
    if f.horizon_s % f.sample_interval_s:
        raise _fail("forecast.horizon_s", f"a multiple of sample_interval_s ({f.sample_interval_s})", f.horizon_s)
    if f.horizon_s > f.season_s:
        raise _fail("forecast.horizon_s", f"at most one season ({f.season_s} s)", f.horizon_s)
    _int_at_least("forecast.history_seasons", f.history_seasons, 2)
    if f.history_seasons > MAX_HISTORY_SEASONS:
        raise _fail("forecast.history_seasons", f"at most {MAX_HISTORY_SEASONS}", f.history_seasons)
    if not isinstance(f.fit, bool):
        raise _fail("forecast.fit", "true or false", f.fit)
    for name in ("alpha", "beta", "gamma"):
        _num_in(f"forecast.{name}", getattr(f, name), 0.0, 1.0, "a number in [0, 1]")


DEFAULT_POLICY = Policy()

__all__ = [
    "DEFAULT_POLICY",
    "MAX_HISTORY_SEASONS",
    "MAX_SEASON_SAMPLES",
    "ForecastMode",
    "ForecastSettings",
    "Policy",
    "ScaleUpLimits",
    "Select",
    "Thresholds",
]
