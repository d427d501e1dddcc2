"""A 64-rank plan started by real mpirun (Open MPI 5 and 4.1): the hostfile and the one rank script
give every rank exactly the command dry-run shows for it, with the forwarded environment."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from launcher.config import LaunchConfig
from launcher.mpi import detect_mpi
from launcher.plan import ADMIN_KEY_ENV, LAUNCH_ID_ENV, Member, TritonCommand, build_plan
from launcher.supervisor import hostfile_written
from tests.conftest import VENV_BIN
from tests.integration.launch import launch_env

pytestmark = pytest.mark.integration

RANKS = 64
# Stands in for tritonserver: writes its own command line to $OUT/<rank>, one word per line. It lives a
# second, as ranks do: Debian's mpirun 4.1.4 sometimes never returns when 64 local processes all end at
# once (seen in 2 of 4 runs, with one app context per rank as well as with this plan's single one).
RECORDER = """#!/bin/sh
{ printf '%s\\n' "$0" "$@"; printf 'launch=%s\\n' "$LAUNCHER_LAUNCH_ID"; } > "$OUT/$OMPI_COMM_WORLD_RANK"
sleep 1
"""


@pytest.mark.parametrize("mpirun", [str(VENV_BIN / "mpirun"), "/usr/bin/mpirun"], ids=["ompi5", "ompi4.1"])
def test_64_ranks_each_run_their_displayed_command(mpirun: str, tmp_path: Path) -> None:
    if not Path(mpirun).exists():
        pytest.skip(f"{mpirun} is not installed")
    path, flavor = detect_mpi(mpirun)
    recorder = tmp_path / "tritonserver"
    recorder.write_text(RECORDER)
    recorder.chmod(0o755)
    out = tmp_path / "out"
    out.mkdir()
    config = LaunchConfig(tp=RANKS, gpus_per_pod=RANKS, mpirun=path, extra_env={"OUT": str(out)})
    environ = launch_env()
    plan = build_plan(config, [Member("localhost", "127.0.0.1", 0)], flavor, triton=TritonCommand(str(recorder)),
                      environ=environ, launch_id="wide64", is_root=os.geteuid() == 0, agent=None,
                      hostfile=str(tmp_path / "hosts"))
    with hostfile_written(plan):
        # (the displayed commands name the admin key's variable, which each rank's script expands)
        done = subprocess.run(plan.argv, env={**environ, **plan.env, ADMIN_KEY_ENV: f"${ADMIN_KEY_ENV}"},
                              capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(int(p.name) for p in out.iterdir()) == list(range(RANKS))
    for rank in plan.ranks:
        lines = (out / str(rank.rank)).read_text().splitlines()
        assert lines[:-1] == list(rank.argv), rank.rank
        assert lines[-1] == "launch=wide64"  # forwarded with -x to every rank
    assert not (tmp_path / "hosts").exists()  # removed with the launch
    assert plan.env[LAUNCH_ID_ENV] == "wide64"
