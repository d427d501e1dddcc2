"""mpirun's own runtime failing before any rank: a fault of the moment, worth exactly one more try.

Open MPI 4.1 with PMIx 4.2 now and then cannot start its PMIx server's listener (seen in this
project's CI runs, by launch and by preflight); mpirun then exits before it starts a daemon or a
rank, and the same command started again works.
Launch and preflight both ask ``said_runtime_did_not_start`` of what mpirun wrote.
"""

from __future__ import annotations

import os
import threading
from typing import IO

RUNTIME_START_FAILURES = ("PMIx server's listener thread failed to start",)
_LONGEST = max(len(marker) for marker in RUNTIME_START_FAILURES)


def said_runtime_did_not_start(text: str) -> bool:
    return any(marker in text for marker in RUNTIME_START_FAILURES)


class StderrTee:
    """Copies a pipe (mpirun's stderr, which carries its ranks' too) to this process's stderr as it
    comes, and remembers whether mpirun said its runtime did not start."""

    def __init__(self, pipe: IO[bytes], out_fd: int = 2) -> None:
        self._pipe, self._out_fd = pipe, out_fd
        self.runtime_did_not_start = False
        self._thread = threading.Thread(target=self._copy, name="mpirun-stderr", daemon=True)

    def start(self) -> StderrTee:
        self._thread.start()
        return self

    def join(self, timeout_s: float) -> None:
        """Wait for the pipe's end (a process mpirun started may still hold it: not waited for past the timeout)."""
        self._thread.join(timeout_s)

    def _copy(self) -> None:
        carry = ""  # the end of the last chunk: a marker may be split between two reads
        while chunk := os.read(self._pipe.fileno(), 65536):
            self._write(chunk)
            text = carry + chunk.decode(errors="replace")
            self.runtime_did_not_start = self.runtime_did_not_start or said_runtime_did_not_start(text)
            carry = text[-_LONGEST:]
        self._pipe.close()

    def _write(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        try:
            while view:
                view = view[os.write(self._out_fd, view):]
        except OSError:
            pass  # stderr closed: mpirun must still be drained, or it blocks
