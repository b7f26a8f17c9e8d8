"""Additive Holt-Winters forecasting, its backtest, and the synthetic load series that test it.

This module owns one small forecasting model: additive Holt-Winters (level, trend, and one
seasonal pattern of ``season_length`` samples), fitted over an evenly spaced series and asked for
the next ``h`` values. The autoscaler uses it to see the next hour's peak before it arrives.

It is pure: no clocks, no I/O, no global random. A series is a sequence of floats, one per sample
interval; what the interval is belongs to the caller. ``synthetic_load`` draws its noise from a
``random.Random(seed)`` of its own, so the same arguments give the same series in any process.

Theory of operation. With smoothing factors alpha, beta, gamma in [0, 1], each sample y_t updates

    level_t    = alpha (y_t - season_{t-m}) + (1 - alpha) (level_{t-1} + trend_{t-1})
    trend_t    = beta (level_t - level_{t-1}) + (1 - beta) trend_{t-1}
    season_t   = gamma (y_t - level_t) + (1 - gamma) season_{t-m}

and the forecast k steps after the last sample is ``level + k trend + season`` of the matching
phase. The initial state comes from the first two seasons (their means give level and trend; the
average deviation of each phase from its season's trend line gives the seasonal pattern), which is why
a fit needs at least two full seasons. Parameters left unset are fitted by a small fixed grid
search minimising the one-step-ahead squared error after the first season: deterministic, and
cheap enough to run now and then (the autoscaler caches the result).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from canidae.core.errors import InvalidInput

# The grid is small on purpose: a fit is len(grid) passes over the series. These values span
# slow to fast level tracking, no to moderate trend, slow to fast seasonal drift.
ALPHA_GRID = (0.1, 0.2, 0.4, 0.6, 0.8)
BETA_GRID = (0.0, 0.01, 0.05, 0.1)
GAMMA_GRID = (0.05, 0.1, 0.2, 0.4)


def _unit(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise InvalidInput(f"holt-winters {name} must be a number in [0, 1], got {value!r}")
    return float(value)


@dataclass(frozen=True, slots=True)
class HoltWinters:
    """A fitted additive Holt-Winters model: its parameters and its state after ``n`` samples.

    ``seasonal[i]`` is the seasonal term of every sample whose index is ``i`` modulo
    ``season_length``. ``sse`` is the sum of squared one-step-ahead errors after the first season,
    the figure the grid search minimises.
    """

    season_length: int
    alpha: float
    beta: float
    gamma: float
    level: float
    trend: float
    seasonal: tuple[float, ...]
    n: int
    sse: float

    @staticmethod
    def fit(
        series: Sequence[float],
        season_length: int,
        alpha: float | None = None,
        beta: float | None = None,
        gamma: float | None = None,
    ) -> HoltWinters:
        """Fit over ``series`` (at least two seasons); unset parameters are chosen by grid search."""
        m = season_length
        if isinstance(m, bool) or not isinstance(m, int) or m < 2:
            raise InvalidInput(f"holt-winters season length must be an integer >= 2, got {m!r}")
        if len(series) < 2 * m:
            raise InvalidInput(f"holt-winters needs two seasons ({2 * m} samples), got {len(series)}")
        ys = [float(y) for y in series]
        if not all(math.isfinite(y) for y in ys):
            raise InvalidInput("holt-winters series must hold finite numbers")
        alphas = (_unit("alpha", alpha),) if alpha is not None else ALPHA_GRID
        betas = (_unit("beta", beta),) if beta is not None else BETA_GRID
        gammas = (_unit("gamma", gamma),) if gamma is not None else GAMMA_GRID
        best: HoltWinters | None = None
        # Grid order is fixed and ties keep the first, so a fit is a function of its inputs.
        for a in alphas:
            for b in betas:
                for g in gammas:
                    model = _run(ys, m, a, b, g)
                    if best is None or model.sse < best.sse:
                        best = model
        assert best is not None
        return best

    def update(self, y: float) -> HoltWinters:
        """The model after one more sample (parameters unchanged)."""
        level, trend, seasonal, sse = self.level, self.trend, list(self.seasonal), self.sse
        level, trend, err = _step(level, trend, seasonal, self.n, float(y),
                                  self.season_length, self.alpha, self.beta, self.gamma)
        return HoltWinters(self.season_length, self.alpha, self.beta, self.gamma,
                           level, trend, tuple(seasonal), self.n + 1, sse + err * err)

    def forecast(self, h: int) -> tuple[float, ...]:
        """The next ``h`` values after the last sample fitted."""
        if isinstance(h, bool) or not isinstance(h, int) or h < 0:
            raise InvalidInput(f"forecast horizon must be a non-negative integer, got {h!r}")
        m = self.season_length
        return tuple(self.level + k * self.trend + self.seasonal[(self.n + k - 1) % m] for k in range(1, h + 1))


def _step(
    level: float, trend: float, seasonal: list[float], t: int, y: float,
    m: int, alpha: float, beta: float, gamma: float,
) -> tuple[float, float, float]:
    """Fold sample ``y`` at index ``t`` in; returns the new level and trend and the one-step error."""
    s_prev = seasonal[t % m]
    err = y - (level + trend + s_prev)
    new_level = alpha * (y - s_prev) + (1.0 - alpha) * (level + trend)
    trend = beta * (new_level - level) + (1.0 - beta) * trend
    seasonal[t % m] = gamma * (y - new_level) + (1.0 - gamma) * s_prev
    return new_level, trend, err


def _run(ys: list[float], m: int, alpha: float, beta: float, gamma: float) -> HoltWinters:
    mean1 = sum(ys[:m]) / m
    mean2 = sum(ys[m:2 * m]) / m
    trend = (mean2 - mean1) / m
    # mean1 is the level at the middle of the first season; step it back to just before sample 0.
    level = mean1 - trend * (m + 1) / 2
    # Each phase's deviation from its season's trend line (not from the flat mean), so that a
    # trend is not mistaken for a seasonal shape.
    seasonal = [((ys[i] - mean1) + (ys[i + m] - mean2)) / 2 - trend * (i - (m - 1) / 2) for i in range(m)]
    sse = 0.0
    for t, y in enumerate(ys):
        level, trend, err = _step(level, trend, seasonal, t, y, m, alpha, beta, gamma)
        if t >= m:  # the first season fed the initial state; its errors say little
            sse += err * err
    return HoltWinters(m, alpha, beta, gamma, level, trend, tuple(seasonal), len(ys), sse)


@dataclass(frozen=True, slots=True)
class BacktestResult:
    """How well rolling forecasts matched what came next.

    From every origin after the training part, the model forecasts ``horizon`` samples, then takes
    the next real sample in. ``mape`` is the mean absolute percentage error over every forecast
    sample; ``peak_error`` the mean, and ``worst_peak_error`` the largest, absolute error of the
    forecast window's peak against the real window's peak, as a percentage of the real peak (the
    autoscaler acts on the peak). ``peak_under`` is the share of origins whose forecast peak fell
    more than 5 % short of the real one.
    """

    mape: float
    peak_error: float
    worst_peak_error: float
    peak_under: float
    origins: int
    alpha: float
    beta: float
    gamma: float


def backtest(
    series: Sequence[float],
    season_length: int,
    horizon: int,
    train_seasons: int = 2,
    alpha: float | None = None,
    beta: float | None = None,
    gamma: float | None = None,
    reference: Sequence[float] | None = None,
) -> BacktestResult:
    """Fit on the first ``train_seasons`` seasons, then roll forecasts over the rest of ``series``.

    Forecasts are scored against ``reference`` when given (the same series without its noise, to
    measure the model rather than the noise it cannot predict), else against ``series`` itself.
    """
    if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1:
        raise InvalidInput(f"backtest horizon must be a positive integer, got {horizon!r}")
    if isinstance(train_seasons, bool) or not isinstance(train_seasons, int) or train_seasons < 2:
        raise InvalidInput(f"backtest needs at least two training seasons, got {train_seasons!r}")
    train = season_length * train_seasons
    if len(series) < train + horizon:
        raise InvalidInput(f"backtest needs {train + horizon} samples, got {len(series)}")
    truth = series if reference is None else reference
    if len(truth) != len(series):
        raise InvalidInput(f"backtest reference has {len(truth)} samples, the series {len(series)}")
    model = HoltWinters.fit(series[:train], season_length, alpha, beta, gamma)
    ape_sum, ape_n = 0.0, 0
    peak_sum, peak_worst, under, origins = 0.0, 0.0, 0, 0
    for t in range(train, len(series) - horizon + 1):
        predicted = model.forecast(horizon)
        actual = truth[t:t + horizon]
        for f, a in zip(predicted, actual):
            if a != 0:
                ape_sum += abs(f - a) / abs(a)
                ape_n += 1
        real_peak, fc_peak = max(actual), max(predicted)
        if real_peak > 0:
            err = abs(fc_peak - real_peak) / real_peak
            peak_sum += err
            peak_worst = max(peak_worst, err)
            under += fc_peak < 0.95 * real_peak
            origins += 1
        model = model.update(series[t])
    return BacktestResult(
        mape=100.0 * ape_sum / max(1, ape_n),
        peak_error=100.0 * peak_sum / max(1, origins),
        worst_peak_error=100.0 * peak_worst,
        peak_under=under / max(1, origins),
        origins=origins,
        alpha=model.alpha, beta=model.beta, gamma=model.gamma,
    )


def diurnal_shape(day_fraction: float, peak_hour: float = 14.0) -> float:
    """A smooth daily curve in [0, 1]: 1 at ``peak_hour``, 0 twelve hours away."""
    return (1.0 + math.cos(2.0 * math.pi * (day_fraction - peak_hour / 24.0))) / 2.0


def synthetic_load(
    days: int,
    samples_per_day: int,
    base: float,
    amplitude: float,
    noise: float = 0.0,
    seed: int = 0,
    weekend_factor: float | None = None,
    growth_per_day: float = 0.0,
) -> tuple[float, ...]:
    """A daily (and, with ``weekend_factor``, weekly) load series, one value per sample.

    Each value is ``base + amplitude * diurnal_shape`` (the amplitude scaled by ``weekend_factor``
    on days 5 and 6 of each week), grown by ``growth_per_day`` of ``base`` per day, times
    ``1 + N(0, noise)`` drawn from ``random.Random(seed)``; never below zero.
    """
    if days < 1 or samples_per_day < 1:
        raise InvalidInput("synthetic load needs at least one day and one sample per day")
    rng = random.Random(seed)
    out = []
    for i in range(days * samples_per_day):
        day, phase = divmod(i, samples_per_day)
        amp = amplitude
        if weekend_factor is not None and day % 7 in (5, 6):
            amp *= weekend_factor
        value = base * (1.0 + growth_per_day * i / samples_per_day) + amp * diurnal_shape(phase / samples_per_day)
        if noise:
            value *= 1.0 + rng.gauss(0.0, noise)
        out.append(max(0.0, value))
    return tuple(out)


__all__ = [
    "ALPHA_GRID",
    "BETA_GRID",
    "GAMMA_GRID",
    "BacktestResult",
    "HoltWinters",
    "backtest",
    "diurnal_shape",
    "synthetic_load",
]
