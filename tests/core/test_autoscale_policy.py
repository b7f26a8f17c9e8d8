"""The autoscaling policy: the seed's numbers by default, TOML both ways, every bad field named."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from canidae.core.autoscale_policy import (
    ForecastMode,
    ForecastSettings,
    Policy,
    ScaleUpLimits,
    Select,
    Thresholds,
)
from canidae.core.errors import InvalidInput


def test_defaults_are_the_seeds_numbers() -> None:
    p = Policy()
    assert (p.cpu.up, p.cpu.down) == (70.0, 30.0)
    assert (p.memory.up, p.memory.down) == (80.0, 40.0)
    assert p.packs_per_node == 50
    assert (p.min_nodes, p.max_nodes) == (3, 1000)
    assert p.cooldown_s == 300
    assert p.tolerance == 0.1
    assert p.scale_down_window_s == 300
    assert p.evaluation_interval_s == 10
    # Forecasting starts shown but not acting.
    assert p.forecast.mode is ForecastMode.FORECAST_ONLY
    assert not p.dry_run and not p.paused


def test_threshold_checks_aim_at_the_midpoint() -> None:
    assert Policy().cpu.target == 50.0
    assert Policy().memory.target == 60.0


def test_an_empty_document_is_the_default_policy() -> None:
    assert Policy.from_dict({}) == Policy()
    assert Policy.from_toml("") == Policy()


def test_toml_round_trips_a_policy_with_every_field_changed() -> None:
    p = Policy(
        cpu=Thresholds(65.0, 25.0), memory=Thresholds(85.0, 35.0), packs_per_node=40, min_nodes=5,
        max_nodes=3000, cooldown_s=120, tolerance=0.05, scale_down_window_s=600,
        scale_up=ScaleUpLimits(max_per_step=50, period_s=30, max_nodes_per_period=4,
                               max_percent_per_period=50.0, select=Select.MIN),
        evaluation_interval_s=15, metrics_max_age_s=45,
        forecast=ForecastSettings(mode=ForecastMode.ACT, season_s=7 * 86_400, sample_interval_s=600,
                                  horizon_s=1800, history_seasons=2, fit=True, alpha=0.3, beta=0.01, gamma=0.2),
        dry_run=True, paused=True,
    )
    assert Policy.from_toml(p.to_toml()) == p
    assert Policy.from_dict(p.to_dict()) == p


def test_a_partial_document_keeps_the_other_defaults() -> None:
    p = Policy.from_toml('[nodes]\nmax = 2500\n[forecast]\nmode = "act"\n')
    assert p.max_nodes == 2500 and p.min_nodes == 3
    assert p.forecast.mode is ForecastMode.ACT and p.forecast.season_s == 86_400
    assert p.cpu == Policy().cpu


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ({"cooldwn_s": 10}, "cooldwn_s"),
        ({"cpu": {"upper": 80}}, "cpu.upper"),
        ({"forecast": {"season": 3600}}, "forecast.season"),
        ({"cpu": 70}, "cpu"),
        ({"cpu": {"up": "70"}}, "cpu.up"),
        ({"cpu": {"up": 120}}, "cpu.up"),
        ({"cpu": {"up": 20, "down": 30}}, "cpu.down"),
        ({"memory": {"down": -1}}, "memory.down"),
        ({"packs": {"per_node": 0}}, "packs.per_node"),
        ({"packs": {"per_node": 2.5}}, "packs.per_node"),
        ({"nodes": {"min": -1}}, "nodes.min"),
        ({"nodes": {"min": 10, "max": 5}}, "nodes.max"),
        ({"nodes": {"max": True}}, "nodes.max"),
        ({"cooldown_s": -5}, "cooldown_s"),
        ({"tolerance": 1.0}, "tolerance"),
        ({"tolerance": -0.1}, "tolerance"),
        ({"scale_down": {"window_s": -1}}, "scale_down.window_s"),
        ({"scale_up": {"max_per_step": 0}}, "scale_up.max_per_step"),
        ({"scale_up": {"period_s": 0}}, "scale_up.period_s"),
        ({"scale_up": {"select": "most"}}, "scale_up.select"),
        ({"scale_up": {"max_nodes_per_period": 0, "max_percent_per_period": 0}}, "scale_up"),
        ({"evaluation_interval_s": 0}, "evaluation_interval_s"),
        ({"metrics_max_age_s": 0}, "metrics_max_age_s"),
        ({"dry_run": "yes"}, "dry_run"),
        ({"forecast": {"mode": "on"}}, "forecast.mode"),
        ({"forecast": {"season_s": 1000, "sample_interval_s": 300}}, "forecast.season_s"),
        ({"forecast": {"season_s": 30 * 86_400, "sample_interval_s": 60}}, "forecast.season_s"),
        ({"forecast": {"horizon_s": 100}}, "forecast.horizon_s"),
        ({"forecast": {"horizon_s": 2 * 86_400}}, "forecast.horizon_s"),
        ({"forecast": {"history_seasons": 1}}, "forecast.history_seasons"),
        ({"forecast": {"alpha": 1.5}}, "forecast.alpha"),
        ({"forecast": {"fit": 1}}, "forecast.fit"),
    ],
)
def test_bad_fields_are_refused_by_name(doc: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput, match=f"autoscale policy: .*{field}"):
        Policy.from_dict(doc)


def test_a_policy_built_in_code_is_held_to_the_same_rules() -> None:
    with pytest.raises(InvalidInput, match="nodes.max"):
        replace(Policy(), min_nodes=10, max_nodes=5)
    with pytest.raises(InvalidInput, match="cpu.down"):
        Policy(cpu=Thresholds(30.0, 70.0))


def test_malformed_toml_is_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="not valid TOML"):
        Policy.from_toml("[nodes\nmax = 1")
