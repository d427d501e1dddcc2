"""Scale on the real control plane. A group of 16 pods (one per kwok node) found, reached through
kubessh and run through mpirun by `launcher preflight`. And many leaders against one API server:
25 groups of 4 pods under one LeaderWorkerSet, each group's
`launcher leader` running in its leader pod (its token, the launcher's Role) and watching its group,
whose workers stay Pending (a node label no node has) so that every leader keeps watching. Then the
API server is killed and started again: every leader must watch again, none may exit.

Each on a control plane of its own, started for this module: 16 nodes of one pod, and two nodes of 16
pods (25 leader pods), whose leaders share their node's network namespace, so each gets its own ports.
"""
from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from cluster.controlplane import Cluster
from tests.cluster.conftest import running_cluster
from tests.cluster.leaders import (
    apiserver_metrics,
    log_records,
    pod_requests,
    start_watching_leaders,
    stop_leaders,
)
from tests.cluster.lws import apply_lws, grant_launcher_role, lws, wait_for, wait_group
from tests.conftest import VENV_BIN
from tests.integration.launch import private_repo

pytestmark = pytest.mark.cluster

LEADERS, SIZE = 25, 4
WIDE_GROUP = 16  # pods of the one wide group, one per node


@pytest.fixture(scope="module")
def wide_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("wide"), nodes=2, pods_per_node=16) as c:
        yield c


def test_every_leader_watches_again_after_an_api_server_restart(wide_cluster: Cluster, tmp_path: Path) -> None:
    cluster = wide_cluster
    ns = cluster.create_namespace("scale")
    leaders = start_watching_leaders(cluster, ns, LEADERS, SIZE, tmp_path)
    try:
        assert pod_requests(apiserver_metrics(cluster.api), "apiserver_longrunning_requests", "WATCH") >= LEADERS
        rss = sorted(psutil.Process(proc.pid).memory_info().rss / 2**20 for proc, _ in leaders)

        killed = time.monotonic()
        cluster.restart("kube-apiserver", down_s=3)
        back = time.monotonic()
        samples: list[tuple[float, float, float]] = []

        def watching() -> bool:
            text = apiserver_metrics(cluster.api)
            samples.append((time.monotonic() - back, pod_requests(text, "apiserver_longrunning_requests", "WATCH"),
                            pod_requests(text, "apiserver_request_total", "LIST")))
            return samples[-1][1] >= LEADERS

        wait_for("every leader watching again", lambda: watching() or None, lambda: samples[-5:], timeout=60,
                 interval_s=0.2)
        exited = [(log.name, log.read_text(errors="replace")[-500:]) for proc, log in leaders
                  if proc.poll() is not None]
        assert exited == []
        errors = [(log.name, r.get("message")) for _, log in leaders for r in log_records(log)
                  if r.get("level") in ("error", "critical")]
        assert errors == []
        retries = [float(m.group(1)) for _, log in leaders for r in log_records(log)
                   if (m := re.search(r"retrying in ([\d.]+)s", str(r.get("message", ""))))]
        retries.sort()
        assert len(set(retries)) > 1, retries  # jittered: not in lockstep
        print(f"\n{LEADERS} leaders: RSS median {rss[len(rss) // 2]:.0f} MiB, max {rss[-1]:.0f} MiB; API server "
              f"killed, back (ready) after {back - killed:.1f}s, every leader watching again {samples[-1][0]:.2f}s "
              f"later; {samples[-1][2]:.0f} pod lists by then; {len(retries)} reconnect waits of "
              f"{retries[0]:.1f}-{retries[-1]:.1f}s (median {retries[len(retries) // 2]:.1f}s), "
              f"{len(set(retries))} distinct")
    finally:
        stop_leaders(leaders)
        cluster.delete_namespace(ns, timeout=60)


@pytest.fixture(scope="module")
def tall_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("tall"), nodes=WIDE_GROUP) as c:
        yield c


def test_a_16_pod_group_is_found_reached_and_runs_one_rank_per_pod(tall_cluster: Cluster, tmp_path: Path) -> None:
    """`launcher preflight` in the leader pod of a 16-pod group: discovery through the API, kubessh into
    all 15 workers, and mpirun running the preflight program on all 16 ranks (its barrier and
    all-reduce prove that every rank took part)."""
    cluster = tall_cluster
    ns = cluster.create_namespace("tall")
    grant_launcher_role(cluster.api, ns)
    apply_lws(cluster.api, ns, lws("t", WIDE_GROUP, leader={}))
    pods = wait_group(cluster.api, ns, "t", WIDE_GROUP, timeout=120)
    leader = pods[0]  # by worker index
    argv = [str(VENV_BIN / "launcher"), "preflight", f"--tp={WIDE_GROUP}", "--gpus-per-pod=1", "--output=json",
            "--preflight-max-bytes=65536", "--discovery-timeout=120", f"--model-repo={private_repo(tmp_path)}",
            "--model=toy_tp", "--log-format=json"]
    started = time.monotonic()
    proc = cluster.popen_in_pod(ns, leader.metadata.name, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, cwd="/")
    try:
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    took = time.monotonic() - started
    assert proc.returncode == 0, (out[-2000:], err[-4000:])
    report = json.loads(out)
    assert report["passed"] and [r["stage"] for r in report["ranks"]] == ["done"] * WIDE_GROUP
    assert sorted(r["pod"] for r in report["ranks"]) == sorted(p.metadata.name for p in pods)
    print(f"\n{WIDE_GROUP}-pod group: discovery, kubessh into {WIDE_GROUP - 1} workers and preflight on "
          f"{WIDE_GROUP} ranks in {took:.1f}s (preflight itself {report['seconds']:.1f}s)")
    cluster.delete_namespace(ns, timeout=60)
