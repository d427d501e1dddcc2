"""Fixtures for tests/chart. The tools come from scripts/install-test-tools.sh;
a test whose tool is missing skips and says so."""

from __future__ import annotations

from pathlib import Path

import pytest
from chart_helpers import INSTALL_HINT, Helm, find_tool, helm_or_skip


@pytest.fixture(scope="session")
def helm() -> Helm:
    """The primary helm (v4)."""
    return helm_or_skip("helm4")


@pytest.fixture(scope="session", params=["helm4", "helm3"])
def any_helm(request: pytest.FixtureRequest) -> Helm:
    """Each helm major version in turn."""
    return helm_or_skip(request.param)


@pytest.fixture(scope="session")
def hadolint() -> Path:
    binary = find_tool("hadolint", "HADOLINT")
    if binary is None:
        pytest.skip(f"hadolint not found: {INSTALL_HINT}")
    return binary
