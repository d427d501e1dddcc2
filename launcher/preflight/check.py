"""The leader's side of preflight: run the rank program through the launch plan
and turn what the ranks print into a verdict.

Ranks print JSON lines (see ``rank.py``); mpirun forwards them here. A rank
that never reaches "done" is named with the last stage it reported, so a
crashed program, a cut network or a hung peer all point at a rank and a pod.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import subprocess
import threading
import time
from collections.abc import Mapping
from typing import Any

from ..plan import LaunchPlan, Rank
from ..runtime_start import said_runtime_did_not_start

log = logging.getLogger("launcher.preflight")

STAGES = ("start", "info", "barrier", "allreduce", "done")


@dataclasses.dataclass
class RankReport:
    rank: int
    pod: str
    local_rank: int
    host: str = "?"
    stage: str = "not started"
    gpu: int | None = None
    gpu_uuid: str | None = None
    gpus: int = 0
    fabric: Mapping[str, str] = dataclasses.field(default_factory=dict)
    problem: str = ""


@dataclasses.dataclass
class PreflightResult:
    ranks: list[RankReport]
    sweeps: dict[str, list[dict[str, float]]]
    links: list[dict[str, float]]
    problems: list[str]
    seconds: float

    @property
    def passed(self) -> bool:
        return not self.problems

    def largest(self, transport: str) -> dict[str, float] | None:
        results = self.sweeps.get(transport) or []
        return results[-1] if results else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "seconds": self.seconds,
            "problems": self.problems,
            "ranks": [dataclasses.asdict(r) for r in self.ranks],
            "sweeps": self.sweeps,
            "links": self.links,
        }


def rank_program(python: str, deadline_s: float, max_bytes: int, extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    return (python, "-m", "launcher.preflight.rank", f"--deadline={deadline_s:g}", f"--max-bytes={max_bytes}", *extra)


def parse_lines(lines: list[str], ranks: tuple[Rank, ...]) -> tuple[list[RankReport], dict[str, Any]]:
    """Fold the ranks' JSON lines into one report per rank, plus the sweeps."""
    reports = {r.rank: RankReport(r.rank, r.pod, r.local_rank) for r in ranks}
    sweeps: dict[str, Any] = {}
    for line in lines:
        if not line.startswith('{"preflight"'):
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue
        report = reports.get(int(event.get("rank", -1)))
        if report is None:
            continue
        kind = event["preflight"]
        if kind == "info":
            report.host, report.gpu, report.gpu_uuid = event["host"], event.get("gpu"), event.get("gpu_uuid")
            report.gpus, report.fabric = event.get("gpus", 0), event.get("fabric", {})
            report.stage = "info"
        elif kind == "allreduce" and event["value"] != event["expected"]:
            report.problem = f"allreduce gave {event['value']}, expected {event['expected']}"
            report.stage = "allreduce"
        elif kind in ("barrier", "allreduce", "done"):
            report.stage = kind
        elif kind == "sweep":
            sweeps[event["transport"]] = event["results"]
        elif kind == "links":
            sweeps["links"] = event["results"]
        elif kind == "timeout":
            report.problem = f"hung in {event['stage']} past the {event['deadline_s']:g}s deadline"
        elif kind == "failed":
            report.problem = f"failed in {event['stage']}: {event.get('error', '')}"
    return list(reports.values()), sweeps


def judge(reports: list[RankReport], mpirun_output: list[str] | None = None) -> list[str]:
    if reports and all(r.stage == "not started" and not r.problem for r in reports):
        return [_launch_failure(reports, mpirun_output or [])]
    problems = []
    for r in reports:
        if r.problem:
            problems.append(f"rank {r.rank} (pod {r.pod}): {r.problem}")
        elif r.stage != "done":
            problems.append(f"rank {r.rank} (pod {r.pod}): stopped after '{r.stage}'")
    by_pod: dict[str, list[RankReport]] = {}
    for r in reports:
        if r.gpu_uuid:
            by_pod.setdefault(r.pod, []).append(r)
    for pod, members in by_pod.items():
        seen: dict[str, int] = {}
        for r in members:
            if r.gpu_uuid in seen:
                problems.append(f"rank {r.rank} (pod {pod}): shares GPU {r.gpu} ({r.gpu_uuid}) "
                                f"with rank {seen[r.gpu_uuid]}")
            seen.setdefault(r.gpu_uuid or "", r.rank)
    return problems


_REMOTE_HOST = re.compile(r"Remote host:\s+(\S+)")


def _launch_failure(reports: list[RankReport], output: list[str]) -> str:
    """No rank started: blame the pods mpirun names, else quote mpirun."""
    named = {m.group(1) for line in output for m in [_REMOTE_HOST.search(line)] if m}
    blamed = [pod for pod in dict.fromkeys(r.pod for r in reports) if pod in named]
    if blamed:
        return "; ".join(
            f"pod {pod} (ranks {', '.join(str(r.rank) for r in reports if r.pod == pod)}): its MPI daemon did "
            "not start or could not reach the leader (check the pod's network and the agent)"
            for pod in blamed
        )
    said = [line for line in output if line.strip() and not line.startswith(("---", '{"preflight"'))]
    return "no rank started; mpirun said: " + (" / ".join(said[-3:]) or "nothing")


def run_preflight(plan: LaunchPlan, environ: Mapping[str, str], timeout_s: float,
                  stop: threading.Event | None = None) -> PreflightResult:
    """Run the plan (whose ranks run the preflight program) and judge the output."""
    from ..supervisor import hostfile_written

    with hostfile_written(plan):
        result = _run(plan, environ, timeout_s, stop)
        if _runtime_did_not_start(result) and not (stop is not None and stop.is_set()):
            log.warning("preflight: mpirun's runtime did not start (%s); trying once more", result.problems[0])
            retried = _run(plan, environ, max(1.0, timeout_s - result.seconds), stop)
            result = dataclasses.replace(retried, seconds=result.seconds + retried.seconds)
        return result


def _runtime_did_not_start(result: PreflightResult) -> bool:
    return all(r.stage == "not started" for r in result.ranks) and any(
        said_runtime_did_not_start(problem) for problem in result.problems)


def _run(plan: LaunchPlan, environ: Mapping[str, str], timeout_s: float,
         stop: threading.Event | None) -> PreflightResult:
    started = time.monotonic()
    proc = subprocess.Popen(plan.argv, env={**environ, **plan.env}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    rank_failed = threading.Event()
    reader = threading.Thread(target=_collect, args=(proc, lines, rank_failed), daemon=True)
    reader.start()
    timed_out = False
    # A failed or hung rank dooms the check: stop at once rather than wait
    # for mpirun, which does not always abort when a rank ends early.
    while proc.poll() is None and not rank_failed.is_set():
        if time.monotonic() - started > timeout_s or (stop is not None and stop.is_set()):
            timed_out = True
            break
        time.sleep(0.05)
    from .. import procs

    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(2)
        except subprocess.TimeoutExpired:
            pass
    procs.kill_process_group(proc.pid)
    proc.wait()
    procs.sweep(lambda: procs.launch_processes(plan.env["LAUNCHER_LAUNCH_ID"]), grace_s=1.0)
    reader.join(timeout=2)
    reports, sweeps = parse_lines(lines, plan.ranks)
    links = sweeps.pop("links", [])
    problems = judge(reports, lines)
    if timed_out and not problems:
        problems.append(f"preflight did not finish within {timeout_s:g}s")
    if proc.returncode not in (0, None) and not problems:
        problems.append(f"mpirun exited with status {proc.returncode}")
    return PreflightResult(reports, sweeps, links, problems, time.monotonic() - started)


def _collect(proc: subprocess.Popen[str], lines: list[str], rank_failed: threading.Event) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line.strip())
        if not line.startswith('{"preflight"'):
            log.debug("mpirun: %s", line.rstrip())
        elif line.startswith(('{"preflight": "failed"', '{"preflight": "timeout"')):
            rank_failed.set()


def _rate(bytes_per_s: float) -> str:
    return f"{bytes_per_s / 1e9:.2f} GB/s"


def format_result(result: PreflightResult) -> str:
    rows = [("RANK", "POD", "HOST", "LOCAL", "GPU", "STAGE", "PROBLEM")]
    for r in result.ranks:
        gpu = "-" if r.gpu is None else f"{r.gpu}/{r.gpus}"
        rows.append((str(r.rank), r.pod, r.host, str(r.local_rank), gpu, r.stage, r.problem or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    for transport, results in result.sweeps.items():
        lines.append("")
        lines.append(f"{transport} allreduce: {'SIZE':>12}  {'TIME':>10}  {'ALGBW':>12}  {'BUSBW':>12}")
        for item in results:
            lines.append(f"{'':{len(transport) + 11}}{int(item['bytes']):>12}  {item['seconds'] * 1e6:>8.0f}us  "
                         f"{_rate(item['algbw']):>12}  {_rate(item['busbw']):>12}")
    lines.append("")
    lines.append(summary_line(result))
    return "\n".join(lines)


def summary_line(result: PreflightResult) -> str:
    if not result.passed:
        return f"preflight FAILED in {result.seconds:.1f}s: " + "; ".join(result.problems)
    parts = [f"preflight passed in {result.seconds:.1f}s: {len(result.ranks)} ranks"]
    for transport in ("nccl", "mpi"):
        largest = result.largest(transport)
        if largest:
            parts.append(f"{transport} busbw {_rate(largest['busbw'])} at {int(largest['bytes']) >> 20} MiB")
    slowest = slowest_link(result)
    if slowest:
        parts.append(f"slowest link rank 0 <-> rank {int(slowest['peer'])} {_rate(slowest['bandwidth'])}")
    return ", ".join(parts)


def slowest_link(result: PreflightResult) -> dict[str, float] | None:
    return min(result.links, key=lambda link: link["bandwidth"], default=None)
