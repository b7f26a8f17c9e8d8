"""The scale-test document: its kind and version, the seed's table next to what was measured, and how
figures are rounded and formatted (percentiles, bytes, rates).
"""

from __future__ import annotations

import math
from typing import Any

from canidae.core import scaleplan
from canidae.core.scaleplan import percentile

DOC_KIND = "canidae-scale-test"


DOC_VERSION = 1


def fmt_bytes(n: float | None) -> str:
    if n is None or math.isnan(n):
        return "n/a"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.0f} B"


def fmt_rate(n: float | None) -> str:
    if n is None:
        return "n/a"
    for unit, size in (("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:.0f}"


def measured_row(
    packs: int,
    nodes: int,
    *,
    memory: float | None,
    memory_note: str,
    cpu: float | None,
    cpu_note: str,
    yips: float | None,
    yips_note: str,
    p99: float | None,
    p99_note: str,
    cpu_text: str | None = None,
) -> dict[str, Any]:
    """The measured row of the seed's table: raw values, the cells as shown, and what each one is."""
    return {
        "packs": packs,
        "nodes": nodes,
        "memory_bytes": memory,
        "cpu_percent": cpu,
        "yips": yips,
        "p99_ms": p99,
        "cells": {
            "packs": f"{packs:,}",
            "nodes": f"{nodes:,}",
            "memory_per_pack": fmt_bytes(memory),
            "cpu_per_pack": cpu_text if cpu_text is not None else ("n/a" if cpu is None else f"{cpu:.3g}%"),
            "yips_per_s": fmt_rate(yips),
            "p99_latency": "n/a" if p99 is None else f"{p99:.3g}ms",
        },
        "notes": {
            "memory_per_pack": memory_note,
            "cpu_per_pack": cpu_note,
            "yips_per_s": yips_note,
            "p99_latency": p99_note,
        },
    }


def table_doc(measured: dict[str, Any]) -> dict[str, Any]:
    return {
        "columns": list(scaleplan.SEED_COLUMNS),
        "headers": list(scaleplan.SEED_HEADERS),
        "expected": [{k: row[k] for k in scaleplan.SEED_COLUMNS} for row in scaleplan.SEED_TABLE],
        "nearest": scaleplan.nearest_seed_row(measured["packs"]),
        "measured": measured,
    }


def rounded(x: float | None, nd: int = 3) -> float | None:
    return None if x is None or math.isnan(x) else round(x, nd)


def fmt_ms(x: float) -> str:
    if math.isnan(x):
        return "n/a"
    return f"{x:,.0f} ms" if x >= 100 else f"{x:.3g} ms"


def pcts(values: list[float]) -> dict[str, float | None]:
    return {
        "n": len(values),
        "p50": rounded(percentile(values, 50)),
        "p90": rounded(percentile(values, 90)),
        "p99": rounded(percentile(values, 99)),
        "max": rounded(max(values, default=math.nan)),
    }


def hist_pcts(hist: dict[int, int]) -> dict[str, float | None]:
    """p50, p90, p99 and max in ms of a latency histogram in µs (nearest rank)."""
    total = sum(hist.values())
    out: dict[str, float | None] = {"p50_ms": None, "p90_ms": None, "p99_ms": None, "max_ms": None}
    if not total:
        return out
    keys = sorted(hist)
    ranks = {
        name: max(1, math.ceil(p / 100 * total))
        for name, p in (("p50_ms", 50), ("p90_ms", 90), ("p99_ms", 99))
    }
    seen = 0
    for v in keys:
        seen += hist[v]
        for name, rank in ranks.items():
            if out[name] is None and seen >= rank:
                out[name] = v / 1000
    out["max_ms"] = keys[-1] / 1000
    return out
