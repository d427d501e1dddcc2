"""Draw docs/grafana-dashboard.json's panels from Prometheus' own query_range answers.

    .venv/bin/python docs/render_dashboard.py [--answers FILE] [--save-answers FILE] [--output docs/dashboard.png]

Without --answers it makes them: a real `launcher local --ranks 2` run (the
toy model) under load in phases (idle, one client, four clients, idle),
scraped every second from its first second by a real Prometheus (built by
cluster/build.sh) with the labels the chart's PodMonitor gives a leader, the
chart's rules loaded (tests/monitoring/live.py); then every panel's queries,
with the dashboard's variables set to that release, asked as query_range over
the run (tests/monitoring/dashboard.py). That needs helm
(scripts/install-test-tools.sh); drawing needs matplotlib (the `docs` extra).

Nothing is evaluated here: each line, span, number and bar is a value
Prometheus answered. It is not Grafana: the panels are drawn with matplotlib
in the dashboard's grid, $__rate_interval is 4 s (Grafana's four scrape
intervals), and panels that have no series in a local run say why.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "docs" / "grafana-dashboard.json"
CAPTION = "drawn by docs/render_dashboard.py from a real Prometheus' query_range answers, not by Grafana"

Points = list[tuple[float, float]]


def legend(template: str, labels: dict[str, str]) -> str:
    """Grafana's legendFormat ({{label}}); without one, the labels."""
    text = re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template or "")
    return text.strip() or ", ".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "__name__")


@dataclass
class PanelData:
    """One panel's series (legend, points in seconds since the run started), or why there are none."""

    series: list[tuple[str, Points]] = field(default_factory=list)
    problem: str = ""


def panel_data(panel: dict[str, Any], start: float, empty_reasons: dict[str, str]) -> PanelData:
    """A panel's answers (query_range matrices) as series; NaN and infinite values are gaps."""
    data = PanelData()
    for target in panel["targets"]:
        for item in target["result"]:
            points = [(float(t) - start, float(v)) for t, v in item["values"] if math.isfinite(float(v))]
            if points:
                data.series.append((legend(target.get("legendFormat", ""), item["metric"]), points))
    data.series.sort(key=lambda s: s[0])
    if not data.series:
        data.problem = "no series in a local run" + (
            f":\n{empty_reasons[panel['title']]}" if panel["title"] in empty_reasons else "")
    return data


def unit_label(panel: dict[str, Any]) -> str:
    unit = str(panel.get("fieldConfig", {}).get("defaults", {}).get("unit", ""))
    return {"s": "seconds", "reqps": "requests/s", "µs": "µs", "short": ""}.get(unit, unit)


def spans(points: Points, step: float) -> list[tuple[float, float]]:
    """Consecutive sample times (``step`` apart) merged into (start, width) spans."""
    merged: list[tuple[float, float]] = []
    for t, _ in points:
        if merged and t - (merged[-1][0] + merged[-1][1]) < step / 2:
            merged[-1] = (merged[-1][0], t + step - merged[-1][0])
        else:
            merged.append((t, step))
    return merged


def format_value(value: float, unit: str) -> str:
    text = f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return f"{text} {unit}".strip()


# ---------------------------------------------------------------------------
# Drawing (matplotlib)


@dataclass
class Frame:
    """What every panel shares: the run's length, load phases and step, in seconds."""

    end: float
    phases: list[tuple[float, float, str]]
    step: float


def draw_panel(ax: Any, panel: dict[str, Any], data: PanelData, frame: Frame) -> None:
    ax.set_title(panel["title"], loc="left", fontsize=10, fontweight="bold")
    if data.problem:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.text(0.5, 0.5, data.problem, ha="center", va="center", fontsize=8, color="0.4",
                transform=ax.transAxes, wrap=True)
        return
    kind = panel["type"]
    if kind == "timeseries":
        draw_timeseries(ax, panel, data, frame)
    elif kind == "state-timeline":
        draw_state_timeline(ax, data, frame)
    elif kind == "stat":
        draw_stat(ax, panel, data)
    elif kind == "bargauge":
        draw_bars(ax, panel, data)
    else:
        draw_table(ax, data)


def shade_phases(ax: Any, frame: Frame) -> None:
    for start, end, name in frame.phases:
        if name != "idle":
            ax.axvspan(start, end, color="0.93", zorder=0)
            ax.text((start + end) / 2, 0.02, name, transform=ax.get_xaxis_transform(), ha="center", va="bottom",
                    fontsize=7, color="0.45")


def time_axis(ax: Any, frame: Frame) -> None:
    ax.set_xlim(0, frame.end)
    ax.set_xlabel("seconds since the launcher started", fontsize=8)
    ax.tick_params(labelsize=7)


def draw_timeseries(ax: Any, panel: dict[str, Any], data: PanelData, frame: Frame) -> None:
    shade_phases(ax, frame)
    styles = ["-", "--", ":", "-."]
    for i, (name, points) in enumerate(data.series):
        ax.plot([t for t, _ in points], [v for _, v in points], label=name, linewidth=1.4,
                linestyle=styles[i % len(styles)])
    top = max((v for _, points in data.series for _, v in points), default=0.0)
    ax.set_ylim(0, top * 1.35 or 1.0)
    ax.set_ylabel(unit_label(panel), fontsize=8)
    time_axis(ax, frame)
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)


def draw_state_timeline(ax: Any, data: PanelData, frame: Frame) -> None:
    """Grafana's state timeline for one pod: each state a coloured span, named inside it."""
    colours = ["#7eb26d", "#eab839", "#6ed0e0", "#ef843c", "#e24d42", "#1f78c1", "#ba43a9", "#705da0"]
    for i, (name, points) in enumerate(data.series):
        state = name.split()[-1]
        for start, width in spans(points, frame.step):
            ax.broken_barh([(start, width)], (0, 1), color=colours[i % len(colours)])
            ax.text(start + width / 2, 0.5, state, ha="center", va="center", fontsize=8,
                    rotation=0 if width > frame.end / 12 else 90)
    ax.set_ylim(0, 1)
    ax.set_yticks([])
    ax.set_title(" ".join(data.series[0][0].split()[:-1]), loc="right", fontsize=8, color="0.4")
    time_axis(ax, frame)


def draw_stat(ax: Any, panel: dict[str, Any], data: PanelData) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    unit = "s" if unit_label(panel) == "seconds" else ""
    for i, (name, points) in enumerate(data.series):
        y = 0.55 - i * 0.3
        ax.text(0.5, y, format_value(points[-1][1], unit), ha="center", va="center", fontsize=22, color="#1f78c1",
                transform=ax.transAxes)
        ax.text(0.5, y - 0.17, name, ha="center", va="center", fontsize=7, color="0.4", transform=ax.transAxes)


def draw_bars(ax: Any, panel: dict[str, Any], data: PanelData) -> None:
    values = [points[-1][1] for _, points in data.series]
    ax.barh(range(len(values)), values, color="#7eb26d")
    ax.set_yticks(range(len(values)))
    ax.set_yticklabels([name for name, _ in data.series], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(unit_label(panel) + " (at the end of the run)", fontsize=8)
    ax.tick_params(labelsize=7)
    for i, value in enumerate(values):
        ax.text(value, i, f" {value:.2f}", va="center", fontsize=7)


def draw_table(ax: Any, data: PanelData) -> None:
    """Grafana's table of an info metric: one row per label of each series."""
    ax.axis("off")
    rows = [pair.split("=", 1) for name, _ in data.series for pair in name.split(", ")]
    table = ax.table(cellText=rows, colLabels=["label", "value"], loc="upper center", cellLoc="left",
                     colWidths=[0.45, 0.55])
    table.auto_set_font_size(False)
    table.set_fontsize(7)


def render(answers: dict[str, Any], output: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    board = json.loads(DASHBOARD.read_text())
    answered = {panel["title"]: panel for panel in answers["panels"]}
    start = float(answers["start"])
    frame = Frame(float(answers["end"]) - start, [(a - start, b - start, n) for a, b, n in answers["phases"]],
                  float(answers["step"]))
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in board["panels"])
    unit = 0.42  # inches per grid row
    fig = plt.figure(figsize=(22, rows * unit + 1.2))
    grid = fig.add_gridspec(rows, 24, left=0.04, right=0.99, top=1 - 0.9 / (rows * unit + 1.2), bottom=0.04,
                            hspace=4.0, wspace=2.0)
    for panel in board["panels"]:
        pos = panel["gridPos"]
        if panel["type"] == "row":
            fig.text(0.04 + 0.95 * pos["x"] / 24, grid[pos["y"], 0].get_position(fig).y1, panel["title"],
                     fontsize=12, fontweight="bold", va="top")
            continue
        ax = fig.add_subplot(grid[pos["y"] + 1:pos["y"] + pos["h"], pos["x"]:pos["x"] + pos["w"]])
        draw_panel(ax, panel, panel_data(answered[panel["title"]], start, answers.get("empty_reasons", {})), frame)
    fig.suptitle(f"{board['title']}: {CAPTION}", x=0.04, y=0.995, ha="left", fontsize=13)
    variables = answers["variables"]
    fig.text(0.04, 0.968, f"`launcher local --ranks 2` (toy model) scraped every second for {frame.end:.0f} s, "
             f"{answers['requests']} requests, load phases shaded; namespace={variables['namespace']}, "
             f"release={variables['release']}, $__rate_interval={variables['__rate_interval']}",
             ha="left", va="top", fontsize=9, color="0.4")
    fig.savefig(output, dpi=80)
    plt.close(fig)


def live_answers() -> dict[str, Any]:
    """A real run and Prometheus' answers to every panel (tests/monitoring)."""
    sys.path.insert(0, str(REPO))
    from tests.chart.chart_helpers import INSTALL_HINT, Helm, find_tool
    from tests.monitoring import dashboard, live
    from tests.monitoring.prom import BUILD_HINT, PROMETHEUS, binary

    helm = find_tool("helm", "HELM")
    if helm is None or binary(PROMETHEUS) is None:
        sys.exit(f"needs helm ({INSTALL_HINT}) and prometheus ({BUILD_HINT})")
    with tempfile.TemporaryDirectory() as tmp:
        run = live.start(Path(tmp), Helm(helm, "helm4"))
        try:
            live.drive(run)
            return dashboard.answers(run)
        finally:
            run.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "dashboard.png")
    parser.add_argument("--answers", type=Path, help="draw these saved answers instead of making a run")
    parser.add_argument("--save-answers", type=Path, help="also write the answers to this JSON file")
    args = parser.parse_args()
    answers = json.loads(args.answers.read_text()) if args.answers else live_answers()
    if args.save_answers:
        args.save_answers.write_text(json.dumps(answers))
    render(answers, args.output)
    print(f"wrote {args.output} from {sum(len(t['result']) for p in answers['panels'] for t in p['targets'])} "
          f"series over {float(answers['end']) - float(answers['start']):.0f}s")


if __name__ == "__main__":
    main()
