from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from tests.podnet import Pod, PodNetwork


@pytest.fixture
def pods() -> Iterator[tuple[PodNetwork, Pod, Pod]]:
    """Two pod sandboxes, pod0 (the leader's) and pod1, on one private bridge."""
    if os.geteuid() != 0 or not all(shutil.which(t) for t in ("unshare", "nsenter", "ip")):
        pytest.skip("pod sandboxes need root, unshare, nsenter and ip")
    with PodNetwork() as net:
        yield net, net.add_pod("pod0"), net.add_pod("pod1")
