"""The pictures of a scale test run: one SVG document (``render_svg``) and the histogram it draws.

``canidae scale-test report --out FILE.svg`` writes it: a title with the measured row, latency
percentiles over time (log scale when spawn and read latencies share the plot), the packs on
every node at the end, and, for a run with ``--autoscale``, the simulated day of autoscaling
(offered packs, ready and billed nodes and the oracle's count, a tick per decision). Plain SVG
written by hand: no plotting library is installed for it, and the output is deterministic.
"""

from __future__ import annotations

import math
from typing import Any
from xml.sax.saxutils import escape


def histogram(counts: dict[str, int], bins: int = 30) -> dict[str, Any]:
    """Nodes per range of pack counts (equal-width bins from the minimum to the maximum)."""
    values = list(counts.values())
    if not values:
        return {"nodes": 0, "min": 0, "max": 0, "mean": 0.0, "bins": []}
    lo, hi = min(values), max(values)
    width = max(1, math.ceil((hi - lo + 1) / bins))
    n = math.ceil((hi - lo + 1) / width)
    nodes = [0] * n
    for v in values:
        nodes[(v - lo) // width] += 1
    return {
        "nodes": len(values),
        "min": lo,
        "max": hi,
        "mean": sum(values) / len(values),
        "bins": [
            {"from": lo + i * width, "to": lo + (i + 1) * width - 1, "nodes": c} for i, c in enumerate(nodes)
        ],
    }



W, H = 960, 760
COLORS = {"p50": "#2b8cbe", "p90": "#f0a030", "p99": "#d7301f", "max": "#999999"}


def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1
    raw = (hi - lo) / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks, t = [], start
    while t <= hi + step * 1e-9:
        if t >= lo - step * 1e-9:
            ticks.append(round(t, 10))
        t += step
    return ticks


def _fmt_tick(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 10 or v == int(v) else f"{v:.3g}"


class _Svg:
    def __init__(self) -> None:
        self.parts: list[str] = []

    def add(self, s: str) -> None:
        self.parts.append(s)

    def text(
        self,
        x: float,
        y: float,
        s: str,
        size: int = 12,
        anchor: str = "start",
        weight: str = "normal",
        fill: str = "#222",
        rotate: float | None = None,
    ) -> None:
        tr = f' transform="rotate({rotate} {x:.1f} {y:.1f})"' if rotate is not None else ""
        self.add(
            f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
            f'font-weight="{weight}" fill="{fill}"{tr}>{escape(s)}</text>'
        )

    def line(
        self,
        x1: float,
        y1: float,
        x2: float,
        y2: float,
        stroke: str = "#ccc",
        width: float = 1,
        dash: str | None = None,
    ) -> None:
        d = f' stroke-dasharray="{dash}"' if dash else ""
        self.add(
            f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{stroke}" '
            f'stroke-width="{width}"{d}/>'
        )


def _log_ticks(lo: float, hi: float) -> list[float]:
    ticks = []
    for k in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        for m in (1, 2, 5):
            t = m * 10.0**k
            if lo <= t <= hi:
                ticks.append(t)
    return ticks


def _axes(
    svg: _Svg,
    box: tuple[float, float, float, float],
    xs: tuple[float, float],
    ys: tuple[float, float],
    xlabel: str,
    ylabel: str,
    log: bool = False,
) -> tuple[Any, Any]:
    """Draw axes with ticks in ``box`` (x, y, width, height); return the value -> pixel functions."""
    x0, y0, w, h = box
    (xlo, xhi), (ylo, yhi) = xs, ys
    xhi = xhi if xhi > xlo else xlo + 1
    yhi = yhi if yhi > ylo else ylo + 1

    def sx(v: float) -> float:
        return x0 + (v - xlo) / (xhi - xlo) * w

    def sy(v: float) -> float:
        if log:
            v = max(v, ylo)
            return y0 + h - (math.log10(v) - math.log10(ylo)) / (math.log10(yhi) - math.log10(ylo)) * h
        return y0 + h - (v - ylo) / (yhi - ylo) * h

    for t in _log_ticks(ylo, yhi) if log else _nice_ticks(ylo, yhi):
        svg.line(x0, sy(t), x0 + w, sy(t), "#e5e5e5")
        svg.text(x0 - 6, sy(t) + 4, _fmt_tick(t), 11, "end", fill="#555")
    for t in _nice_ticks(xlo, xhi, 8):
        svg.line(sx(t), y0 + h, sx(t), y0 + h + 4, "#888")
        svg.text(sx(t), y0 + h + 17, _fmt_tick(t), 11, "middle", fill="#555")
    svg.line(x0, y0 + h, x0 + w, y0 + h, "#888")
    svg.line(x0, y0, x0, y0 + h, "#888")
    svg.text(x0 + w / 2, y0 + h + 34, xlabel, 12, "middle")
    svg.text(x0 - 48, y0 + h / 2, ylabel + (" (log scale)" if log else ""), 12, "middle", rotate=-90)
    return sx, sy


DASHES = ("", "7,3", "2,3", "9,3,2,3", "4,6")


def render_svg(doc: dict[str, Any]) -> str:
    """The run as one SVG document: a title, latency percentiles over time, packs per node."""
    svg = _Svg()
    p, s = doc["params"], doc["summary"]
    height = H + AUTOSCALE_PANEL_H if doc.get("autoscale") else H
    svg.add(
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" viewBox="0 0 {W} {height}" '
        'font-family="DejaVu Sans, Arial, sans-serif">'
    )
    svg.add(f'<rect width="{W}" height="{height}" fill="white"/>')
    flags = ", ".join(x for x, on in (("chaos", p["chaos"]), ("ramp", p["ramp"])) if on)
    svg.text(
        24,
        30,
        f"canidae scale test ({doc['mode']}): {p['packs']:,} packs"
        + (f", {flags}" if flags else "")
        + f", seed {p['seed']}",
        18,
        weight="bold",
    )
    m = doc["table"]["measured"]["cells"]
    svg.text(
        24,
        52,
        f"nodes {m['nodes']} · memory/pack {m['memory_per_pack']} · CPU/pack {m['cpu_per_pack']} · "
        f"yips/s {m['yips_per_s']} · p99 {m['p99_latency']} · "
        + ("ok" if doc["ok"] else f"{len(doc['problems'])} problem(s)"),
        12,
        fill="#444",
    )

    # Latency percentiles over time.
    lat = doc["series"]["latency"]
    wins = lat["windows"]
    box = (90, 112, W - 130, 258)  # legends in the band above the plot
    svg.text(24, 80, f"Latency percentiles over time: {lat['what']}", 14, weight="bold")
    if wins:
        xs = (min(w["t"] for w in wins), max(w["t"] for w in wins))
        ymax = max(w["p99"] for w in wins)
        positive = [w[k] for w in wins for k in ("p50", "p99") if w[k] > 0]
        # Spawn requests take hundreds of ms, a read one: a log scale shows both.
        log = bool(positive) and max(positive) / min(positive) > 30
        if log:
            ys = (10.0 ** math.floor(math.log10(min(positive))), 10.0 ** math.ceil(math.log10(max(positive))))
        else:
            ys = (0.0, ymax * 1.1 if ymax > 0 else 1.0)
        sx, sy = _axes(svg, box, xs, ys, lat["x"], "ms", log=log)
        phases = list(dict.fromkeys(w.get("phase", "") for w in wins))
        for i, phase in enumerate(phases):
            pts = [w for w in wins if w.get("phase", "") == phase]
            dash = DASHES[i % len(DASHES)]
            dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
            for key in ("p50", "p90", "p99"):
                path = " ".join(f"{sx(w['t']):.1f},{sy(w[key]):.1f}" for w in pts)
                svg.add(
                    f'<polyline points="{path}" fill="none" stroke="{COLORS[key]}" '
                    f'stroke-width="2"{dash_attr}/>'
                )
                for w in pts:
                    svg.add(
                        f'<circle cx="{sx(w["t"]):.1f}" cy="{sy(w[key]):.1f}" r="2.5" fill="{COLORS[key]}"/>'
                    )
        lx = box[0] + box[2] - 240
        for i, key in enumerate(("p50", "p90", "p99")):
            svg.line(lx + i * 70, box[1] - 10, lx + i * 70 + 22, box[1] - 10, COLORS[key], 3)
            svg.text(lx + i * 70 + 26, box[1] - 6, key, 11)
        if len(phases) > 1 or phases[0]:
            px = box[0] + 8
            for i, phase in enumerate(phases):
                svg.line(px, box[1] - 10, px + 26, box[1] - 10, "#555", 2, DASHES[i % len(DASHES)] or None)
                svg.text(px + 30, box[1] - 6, phase, 11, fill="#555")
                px += 40 + 7 * len(phase)
    else:
        svg.text(box[0], box[1] + 40, "no latency samples in this run", 12, fill="#888")

    # Packs per node histogram.
    h = histogram(doc["series"]["packs_per_node"])
    box2 = (90, 450, W - 130, 240)
    svg.text(
        24,
        440,
        f"Packs per node at the end: {h['nodes']:,} nodes, min {h['min']}, mean {h['mean']:.1f}, "
        f"max {h['max']}",
        14,
        weight="bold",
    )
    if h["bins"]:
        bins = h["bins"]
        top = max(b["nodes"] for b in bins)
        sx, sy = _axes(
            svg, box2, (bins[0]["from"], bins[-1]["to"] + 1), (0.0, top * 1.1), "packs on a node", "nodes"
        )
        for b in bins:
            x1, x2 = sx(b["from"]), sx(b["to"] + 1)
            y = sy(b["nodes"])
            svg.add(
                f'<rect x="{x1 + 0.5:.1f}" y="{y:.1f}" width="{max(1.0, x2 - x1 - 1):.1f}" '
                f'height="{box2[1] + box2[3] - y:.1f}" fill="#74a9cf"><title>{b["from"]}-{b["to"]} packs: '
                f"{b['nodes']} nodes</title></rect>"
            )
        mx = sx(h["mean"])
        svg.line(mx, box2[1], mx, box2[1] + box2[3], "#d7301f", 1.5, "4,3")
        svg.text(mx + 4, box2[1] + 12, "mean", 11, fill="#d7301f")
    if doc.get("autoscale"):
        _autoscale_panel(svg, doc["autoscale"], top=H - 30)
    svg.text(24, height - 16, f"{doc['mode']} run · {s.get('wall_s', 0):.1f} s wall", 11, fill="#888")
    svg.add("</svg>")
    return "\n".join(svg.parts) + "\n"


AUTOSCALE_PANEL_H = 330
NODE_COLORS = {"billed": "#2b8cbe", "ready": "#74c476", "oracle": "#999999"}


def _autoscale_panel(svg: _Svg, a: dict[str, Any], top: float) -> None:
    """Nodes (billed, ready, the oracle's) and offered packs over the simulated day, with a tick
    for every add (up) and remove (down)."""
    f = a["figures"]
    svg.text(24, top + 10, f"Autoscaling over a simulated day: {f['adds']} adds, {f['removes']} removes, "
             f"node-hours {f['node_hours_ratio']:.3f}x the oracle's, under-provisioned "
             f"{f['under_provisioned']:.1%}", 14, weight="bold")
    pts = a["series"]
    if not pts:
        return
    box = (90, top + 40, W - 180, 230)
    top_nodes = max(max(p["billed"], p["oracle"]) for p in pts)
    sx, sy = _axes(svg, box, (0.0, 24.0), (0.0, top_nodes * 1.1), "hour of the day", "nodes")
    for key, color in NODE_COLORS.items():
        path = " ".join(f"{sx(p['t_h']):.1f},{sy(p[key]):.1f}" for p in pts)
        dash = ' stroke-dasharray="5,3"' if key == "oracle" else ""
        svg.add(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"{dash}/>')
    # Offered packs on their own scale, at the right.
    top_packs = max(p["packs"] for p in pts)
    x_right = box[0] + box[2]

    def py(v: float) -> float:
        return box[1] + box[3] - v / (top_packs * 1.1) * box[3]
    path = " ".join(f"{sx(p['t_h']):.1f},{py(p['packs']):.1f}" for p in pts)
    svg.add(f'<polyline points="{path}" fill="none" stroke="#f0a030" stroke-width="1.5"/>')
    for t in _nice_ticks(0, top_packs * 1.1):
        svg.text(x_right + 6, py(t) + 4, _fmt_tick(t), 11, fill="#b07010")
    svg.text(x_right + 60, box[1] + box[3] / 2, "offered packs", 12, "middle", fill="#b07010", rotate=90)
    for d in a["decisions"]:
        x = sx(d["t_h"])
        up = d["action"] == "add"
        y = box[1] + box[3]
        svg.add(f'<line x1="{x:.1f}" y1="{y:.1f}" x2="{x:.1f}" y2="{y - 10 if up else y + 10:.1f}" '
                f'stroke="{"#238b45" if up else "#d7301f"}" stroke-width="2"><title>{escape(d["reason"])}</title></line>')
    lx = box[0] + 8
    for key, color in (*NODE_COLORS.items(), ("offered packs", "#f0a030")):
        svg.line(lx, box[1] - 10, lx + 22, box[1] - 10, color, 3)
        svg.text(lx + 26, box[1] - 6, f"{key} nodes" if key in NODE_COLORS else key, 11)
        lx += 40 + 7 * (len(key) + 6)


__all__ = ["histogram", "render_svg"]
