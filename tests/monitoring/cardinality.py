"""How many series one group puts into Prometheus, and that requests do not add any:
two real runs (tests/monitoring/live.py) with different request counts, each counted by
Prometheus itself (/api/v1/series for the release, and the TSDB head's series).

    .venv/bin/python -m tests.monitoring.cardinality
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tests.chart.chart_helpers import INSTALL_HINT, Helm, find_tool
from tests.monitoring import live
from tests.monitoring.prom import BUILD_HINT, PROMETHEUS, binary

RUNS = {"few requests": (("load", 10.0, 1),), "many requests": (("load", 20.0, 1), ("heavier load", 40.0, 4))}


def measure(helm: Helm, phases: tuple[tuple[str, float, int], ...]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        run = live.start(Path(tmp), helm)
        try:
            live.drive(run, phases)
            time.sleep(2)
            params: dict[str, str | float] = {"match[]": "{" + run.selector() + "}", "start": run.started - 60,
                                              "end": time.time()}
            names = Counter(labels["__name__"] for labels in run.prometheus.api("series", **params))
            head = run.prometheus.api("status/tsdb")["headStats"]["numSeries"]
            return {"requests": run.requests, "series": run.series_count(), "head_series": head,
                    "by_name": dict(sorted(names.items()))}
        finally:
            run.stop()


def main() -> None:
    helm = find_tool("helm", "HELM")
    if helm is None or binary(PROMETHEUS) is None:
        sys.exit(f"needs helm ({INSTALL_HINT}) and prometheus ({BUILD_HINT})")
    results = {name: measure(Helm(helm, "helm4"), phases) for name, phases in RUNS.items()}
    print(json.dumps(results, indent=1))
    for name, result in results.items():
        print(f"{name}: {result['requests']} requests, series {result['series']}, TSDB head {result['head_series']}")


if __name__ == "__main__":
    main()
