"""Judging what preflight ranks print, and when a launch is tried again (a shell script as mpirun;
the real processes are tested in integration)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from launcher.plan import LaunchPlan, MpiFlavor, Rank
from launcher.preflight.check import PreflightResult, format_result, judge, parse_lines, run_preflight, summary_line

RANKS = tuple(Rank(r, f"pod{r // 2}", f"pod{r // 2}", r % 2, ()) for r in range(4))


def line(kind: str, rank: int, **fields: object) -> str:
    return json.dumps({"preflight": kind, "rank": rank, **fields})


def info(rank: int, uuid: str | None = None) -> str:
    return line("info", rank, host=f"pod{rank // 2}", local_rank=rank % 2, world=4, gpus=2 if uuid else 0,
                gpu=rank % 2 if uuid else None, gpu_uuid=uuid, fabric={"NCCL_DEBUG": "INFO"})


def complete(rank: int, uuid: str | None = None) -> list[str]:
    return [info(rank, uuid), line("barrier", rank, seconds=0.01), line("allreduce", rank, value=10, expected=10),
            line("done", rank)]


def test_all_ranks_done_passes() -> None:
    lines = [x for r in range(4) for x in complete(r, f"GPU-{r}")]
    lines.insert(3, "some mpirun chatter that is not JSON")
    reports, _ = parse_lines(lines, RANKS)
    assert judge(reports) == []
    assert [r.stage for r in reports] == ["done"] * 4
    assert reports[1].fabric == {"NCCL_DEBUG": "INFO"}


def test_missing_and_hung_ranks_are_named_with_their_pod() -> None:
    lines = complete(0) + complete(1) + [info(2), line("timeout", 2, stage="barrier", deadline_s=5)]
    reports, _ = parse_lines(lines, RANKS)
    assert judge(reports) == [
        "rank 2 (pod pod1): hung in barrier past the 5s deadline",
        "rank 3 (pod pod1): stopped after 'not started'",
    ]


def test_wrong_allreduce_and_failed_program() -> None:
    lines = complete(0) + complete(2) + complete(3)
    lines[2] = line("allreduce", 0, value=7, expected=10)
    lines += [line("failed", 1, stage="start", error="boom")]
    problems = judge(parse_lines(lines, RANKS)[0])
    assert "rank 0 (pod pod0): allreduce gave 7, expected 10" in problems
    assert "rank 1 (pod pod0): failed in start: boom" in problems


def test_two_ranks_of_one_pod_on_one_gpu() -> None:
    lines = complete(0, "GPU-a") + complete(1, "GPU-a") + complete(2, "GPU-a") + complete(3, "GPU-b")
    assert judge(parse_lines(lines, RANKS)[0]) == ["rank 1 (pod pod0): shares GPU 1 (GPU-a) with rank 0"]


def test_summary_names_bandwidth_and_slowest_link() -> None:
    lines = [x for r in range(4) for x in complete(r)]
    lines.append(line("sweep", 0, transport="nccl", results=[
        {"bytes": 2**20, "seconds": 1e-4, "algbw": 1e10, "busbw": 1.5e10},
        {"bytes": 2**28, "seconds": 2e-3, "algbw": 1.3e11, "busbw": 2.0e11}]))
    lines.append(line("links", 0, results=[{"peer": 1, "bytes": 2**24, "seconds": 0.01, "bandwidth": 3e9},
                                           {"peer": 3, "bytes": 2**24, "seconds": 0.02, "bandwidth": 1e9}]))
    reports, sweeps = parse_lines(lines, RANKS)
    links = sweeps.pop("links")
    result = PreflightResult(reports, sweeps, links, judge(reports), 1.5)
    assert summary_line(result) == ("preflight passed in 1.5s: 4 ranks, nccl busbw 200.00 GB/s at 256 MiB, "
                                    "slowest link rank 0 <-> rank 3 1.00 GB/s")
    assert "nccl allreduce:" in format_result(result)


def test_launch_failure_blames_the_pod_mpirun_names() -> None:
    reports, _ = parse_lines([], RANKS)
    output = ["A daemon failed to report back after being spawned.", "  Local host:    pod0",
              "  Remote host:   pod1", "  Daemon exit status: 213"]
    assert judge(reports, output) == [
        "pod pod1 (ranks 2, 3): its MPI daemon did not start or could not reach the leader "
        "(check the pod's network and the agent)"]
    assert judge(reports, ["mpirun: command not found"]) == ["no rank started; mpirun said: mpirun: command not found"]


def fake_mpirun_plan(tmp_path: Path, first_output: str) -> LaunchPlan:
    """A plan whose "mpirun" prints ``first_output`` and fails the first time, and runs both ranks of
    pod0 to "done" every time after."""
    script, count = tmp_path / "mpirun", tmp_path / "count"
    ranks_done = "\n".join(f"echo {shlex.quote(x)}" for r in (0, 1) for x in complete(r))
    script.write_text(f"""#!/bin/sh
n=$(cat {count} 2>/dev/null || echo 0); echo $((n + 1)) > {count}
if [ "$n" = 0 ]; then echo {shlex.quote(first_output)}; exit 1; fi
{ranks_done}
""")
    script.chmod(0o755)
    return LaunchPlan(MpiFlavor(4, 1), ("pod0:2",), RANKS[:2], (str(script),), {"LAUNCHER_LAUNCH_ID": "unit-preflight"},
                      (), str(tmp_path / "hosts"))


def test_a_runtime_that_did_not_start_is_tried_once_more(tmp_path: Path) -> None:
    plan = fake_mpirun_plan(tmp_path, "The PMIx server's listener thread failed to start. We cannot")
    result = run_preflight(plan, {}, timeout_s=20)
    assert result.passed, result.problems
    assert (tmp_path / "count").read_text().strip() == "2"


def test_any_other_launch_failure_is_not_retried(tmp_path: Path) -> None:
    plan = fake_mpirun_plan(tmp_path, "mpirun was unable to find the specified executable file")
    result = run_preflight(plan, {}, timeout_s=20)
    assert result.problems == ["no rank started; mpirun said: mpirun was unable to find the specified executable file"]
    assert (tmp_path / "count").read_text().strip() == "1"
