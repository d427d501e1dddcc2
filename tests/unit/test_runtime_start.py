"""mpirun's runtime failing to start is tried once more, by launch as by preflight (whose own test is
in test_preflight_report); any other failure keeps its outcome. A shell script stands in for mpirun."""

from __future__ import annotations

import os
import shlex
import threading
from pathlib import Path

from launcher.outcome import Ended, exit_code
from launcher.runtime_start import StderrTee
from tests.unit.supervising import supervise

LISTENER_FAILED = "The PMIx server's listener thread failed to start. We cannot"


def mpirun_failing_first(tmp_path: Path, first_words: str, then: str = "exec sleep 30") -> tuple[str, Path]:
    """A script that, its first time, writes ``first_words`` to stderr and exits 213 (as Open MPI 4.1
    did), and any later time runs ``then``; ``count`` says how often it ran."""
    script, count = tmp_path / "mpirun", tmp_path / "count"
    script.write_text(f"""#!/bin/sh
n=$(cat {count} 2>/dev/null || echo 0); echo $((n + 1)) > {count}
if [ "$n" = 0 ]; then echo {shlex.quote(first_words)} >&2; exit 213; fi
{then}
""")
    script.chmod(0o755)
    return str(script), count


def stop_after(seconds: float) -> threading.Event:
    stop = threading.Event()
    threading.Timer(seconds, stop.set).start()
    return stop


def test_a_launch_whose_runtime_did_not_start_starts_mpirun_once_more(tmp_path: Path) -> None:
    mpirun, count = mpirun_failing_first(tmp_path, LISTENER_FAILED)
    outcome, _ = supervise(lambda: None, (mpirun,), stop=stop_after(2.0))
    assert outcome.ended is Ended.STOPPED, outcome
    assert count.read_text().strip() == "2"


def test_a_launch_is_started_once_more_only_once(tmp_path: Path) -> None:
    fail_again = f"echo {shlex.quote(LISTENER_FAILED)} >&2; exit 213"
    mpirun, count = mpirun_failing_first(tmp_path, LISTENER_FAILED, then=fail_again)
    outcome, _ = supervise(lambda: None, (mpirun,))
    assert outcome.ended is Ended.MPIRUN_FAILED and exit_code(outcome) == 213
    assert count.read_text().strip() == "2"


def test_any_other_launch_failure_is_not_started_again(tmp_path: Path) -> None:
    mpirun, count = mpirun_failing_first(tmp_path, "mpirun was unable to find the specified executable file")
    outcome, _ = supervise(lambda: None, (mpirun,))
    assert outcome.ended is Ended.MPIRUN_FAILED and exit_code(outcome) == 213
    assert count.read_text().strip() == "1"


def test_the_tee_copies_everything_and_finds_a_message_split_between_reads(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    copy = tmp_path / "copy"
    with copy.open("wb") as out, os.fdopen(read_end, "rb", buffering=0) as pipe:
        tee = StderrTee(pipe, out.fileno()).start()
        os.write(write_end, b"rank 1: loading\n" + LISTENER_FAILED[:20].encode())
        threading.Event().wait(0.2)  # two reads: the message arrives in two parts
        os.write(write_end, LISTENER_FAILED[20:].encode() + b"\n")
        os.close(write_end)
        tee.join(5)
    assert copy.read_text() == f"rank 1: loading\n{LISTENER_FAILED}\n"
    assert tee.runtime_did_not_start


def test_the_tee_does_not_take_other_words_for_the_message(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    with open(os.devnull, "wb") as out, os.fdopen(read_end, "rb", buffering=0) as pipe:
        tee = StderrTee(pipe, out.fileno()).start()
        os.write(write_end, b"listener thread started\n")
        os.close(write_end)
        tee.join(5)
    assert not tee.runtime_did_not_start
