"""One real run for the scrape and dashboard tests of this directory (tests/monitoring/live.py):
`launcher local --ranks 2` scraped by Prometheus as the chart's PodMonitor has it scraped, with
the chart's rules loaded, driven through the load phases once."""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.chart.chart_helpers import helm_or_skip
from tests.monitoring import live
from tests.monitoring.prom import PROMETHEUS, binary_or_skip


@pytest.fixture(scope="session")
def live_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[live.LiveRun]:
    binary_or_skip(PROMETHEUS)
    helm = helm_or_skip("helm4")
    run = live.start(tmp_path_factory.mktemp("monitoring-run"), helm)
    try:
        live.drive(run)
        yield run
    finally:
        run.stop()
