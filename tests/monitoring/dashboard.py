"""docs/grafana-dashboard.json's queries asked of a real Prometheus after a real run: the
``query_range`` answers docs/render_dashboard.py draws, and what the tests check."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tests.conftest import REPO
from tests.monitoring.live import RATE_INTERVAL, LiveRun

DASHBOARD = REPO / "docs" / "grafana-dashboard.json"

# Panels whose queries return no series in a `launcher local` run, and why. The tests check
# that each still returns none (an entry that starts returning data must leave this list).
EXPECTED_EMPTY = {
    "Worker state": "no worker pod: `launcher local` runs every rank under the leader, and the worker "
                    "agent (launcher_worker_*) runs only in a group's worker pods",
    "Ranks and rank losses on workers": "no worker pod (see Worker state)",
}


def board() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def variables(run: LiveRun) -> dict[str, str]:
    """The dashboard's variables for this run: its namespace and release, and Grafana's
    $__rate_interval for a 1 s scrape."""
    return {"namespace": run.namespace, "release": run.release, "__rate_interval": RATE_INTERVAL}


def substitute(expr: str, values: dict[str, str]) -> str:
    """Grafana's $name and ${name} in a query."""
    return re.sub(r"\$\{?(\w+)\}?", lambda m: values.get(m.group(1), m.group(0)), expr)


def answers(run: LiveRun, step_s: float = 1.0) -> dict[str, Any]:
    """Every panel target's ``query_range`` answer over the whole run (from the launcher's start)."""
    prom = run.prometheus
    end = run.phases[-1][1] if run.phases else run.started
    values = variables(run)
    panels = []
    for panel in board()["panels"]:
        targets = []
        for target in panel.get("targets", []):
            query = substitute(target["expr"], values)
            targets.append({"refId": target["refId"], "expr": target["expr"], "query": query,
                            "legendFormat": target.get("legendFormat", ""),
                            "result": prom.query_range(query, run.started, end, step_s)})
        panels.append({"title": panel["title"], "type": panel["type"], "targets": targets})
    return {"start": run.started, "end": end, "step": step_s, "variables": values, "phases": run.phases,
            "requests": run.requests, "empty_reasons": EXPECTED_EMPTY, "panels": panels}


def save(data: dict[str, Any], path: Path) -> Path:
    path.write_text(json.dumps(data))
    return path
