"""PodWatch's resume/re-list/denial loop against a fake API: every step scripted, a fake clock, no
sleeping. Each script ends by closing the watch, so ``run()`` returns in the test's own thread."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from launcher.errors import ExitCode, LauncherError
from launcher.k8s.pods import PodState
from launcher.k8s.watch import BACKOFF_S, ApiError, Event, Gone, PodWatch, equal_jitter


def pod(name: str, uid: str = "u1", phase: str = "Running") -> PodState:
    return PodState(name, uid, 0, phase, "10.0.0.1", False, 0, True, "")


Step = Callable[["FakeApi"], Any]


class ScriptEnded(Exception):
    pass


class FakeApi:
    """Answers ``list``/``watch`` from a script: each call takes the next step, which returns what the
    API would (or raises). The call after the last step closes the watch (an iteration limit)."""

    def __init__(self, *steps: tuple[str, Any]) -> None:
        self.steps = list(steps)
        self.calls: list[tuple[str, str | None]] = []
        self.now = 1000.0
        self.pauses: list[float] = []
        self.watch_obj: PodWatch | None = None
        self.closed = False

    def _next(self, call: str, version: str | None) -> Any:
        self.calls.append((call, version))
        assert self.watch_obj is not None
        if not self.steps:
            self.watch_obj._closed.set()
            raise ScriptEnded()
        expected, answer = self.steps.pop(0)
        assert expected == call, f"the script expected {expected}, the watch called {call}"
        if isinstance(answer, BaseException):
            raise answer
        return answer(self) if callable(answer) else answer

    def list(self) -> tuple[dict[str, PodState], str]:
        result: tuple[dict[str, PodState], str] = self._next("list", None)
        return result

    def watch(self, version: str) -> Iterator[Event]:
        events = self._next("watch", version)
        for event in events or []:
            if isinstance(event, BaseException):
                raise event
            if isinstance(event, float):  # time passing inside the watch
                self.now += event
                continue
            yield event

    def interrupt(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def clock(self) -> float:
        return self.now

    def pause(self, seconds: float) -> None:
        self.pauses.append(seconds)
        self.now += seconds


def run(api: FakeApi, jitter: Callable[[float], float] = lambda delay: delay) -> PodWatch:
    """The watch's thread body on the scripted API, with no jitter unless one is given."""
    watch = PodWatch(api, "ns1", clock=api.clock, pause=api.pause, jitter=jitter)
    api.watch_obj = watch
    watch.run()
    assert api.closed
    return watch


LONG = 30.0  # a watch that lasted (no backoff after it)


def test_list_then_follow_applies_events_and_resumes_from_the_last_version() -> None:
    api = FakeApi(
        ("list", ({"a": pod("a")}, "10")),
        ("watch", [("ADDED", pod("b"), "11"), ("MODIFIED", pod("a", phase="Failed"), "12"), LONG]),
        ("watch", [("BOOKMARK", None, "15"), LONG]),
        ("watch", [("DELETED", pod("b"), "16"), LONG]),
    )
    watch = run(api)
    generation, pods = watch.snapshot()
    assert sorted(pods) == ["a"] and pods["a"].phase == "Failed"
    assert generation == 4  # the list and three changes; a bookmark is no change
    assert [c for c in api.calls if c[0] == "watch"] == [("watch", "10"), ("watch", "12"), ("watch", "15"),
                                                         ("watch", "16")]
    assert api.pauses == []


def test_a_deleted_event_of_an_older_pod_keeps_its_replacement() -> None:
    api = FakeApi(("list", ({"a": pod("a", uid="new")}, "1")), ("watch", [("DELETED", pod("a", uid="old"), "2"), LONG]))
    assert run(api).snapshot()[1]["a"].uid == "new"


def test_gone_lists_again_and_nothing_else_does() -> None:
    api = FakeApi(
        ("list", ({"a": pod("a")}, "10")),
        ("watch", [("ADDED", pod("b"), "11"), Gone()]),
        ("list", ({"c": pod("c")}, "40")),
        ("watch", [LONG]),
    )
    watch = run(api)
    assert sorted(watch.snapshot()[1]) == ["c"]
    assert [c for c in api.calls] == [("list", None), ("watch", "10"), ("list", None), ("watch", "40"),
                                      ("watch", "40")]
    assert api.pauses == []  # an expired version is normal: no backoff


def test_transport_errors_back_off_and_resume_without_listing() -> None:
    api = FakeApi(
        ("list", ({}, "5")),
        ("watch", ConnectionResetError("reset")),
        ("watch", [OSError("refused")]),
        ("watch", ApiError(503, "Service Unavailable")),
        ("watch", [LONG]),
        ("watch", TimeoutError()),
    )
    run(api)
    assert [c[0] for c in api.calls].count("list") == 1
    assert api.pauses[:4] == list(BACKOFF_S[:3]) + [BACKOFF_S[0]]  # reset by the watch that lasted


def test_the_backoff_is_jittered_into_its_second_half() -> None:
    """Two leaders cut off by the same restart wait different times, each within [delay/2, delay]."""
    script = [("list", ({}, "5")), *[("watch", OSError("refused")) for _ in range(6)], ("watch", [LONG])]
    first, second = FakeApi(*script), FakeApi(*script)
    run(first, jitter=equal_jitter)
    run(second, jitter=equal_jitter)
    expected = [BACKOFF_S[min(i, len(BACKOFF_S) - 1)] for i in range(6)]
    for api in (first, second):
        assert all(d / 2 <= p <= d for p, d in zip(api.pauses, expected, strict=True)), api.pauses
    assert first.pauses != second.pauses


def test_a_watch_that_ends_at_once_backs_off() -> None:
    api = FakeApi(("list", ({}, "5")), ("watch", []), ("watch", []), ("watch", [LONG]))
    run(api)
    assert api.pauses == [BACKOFF_S[0], BACKOFF_S[1]]


def forbidden() -> ApiError:
    return ApiError(403, "Forbidden")


def test_a_denial_before_any_answer_is_final_within_two_seconds() -> None:
    api = FakeApi(*[("list", forbidden()) for _ in range(20)])
    watch = run(api)
    with pytest.raises(LauncherError) as info:
        watch.snapshot()
    assert info.value.exit_code == ExitCode.FORBIDDEN and "cannot list pods in namespace ns1" in str(info.value)
    assert 2.0 <= sum(api.pauses) <= 4.0 and api.steps  # gave up before the script ran out


def test_a_denial_after_an_answer_is_waited_out_up_to_fifteen_seconds() -> None:
    """An API server that has just restarted denies everyone until its caches are filled."""
    recover = [("watch", forbidden()) for _ in range(8)]  # about 10 s of backoff: within the grace
    api = FakeApi(("list", ({"a": pod("a")}, "5")), ("watch", [LONG]), *recover,
                  ("watch", [("ADDED", pod("b"), "6"), LONG]))
    watch = run(api)
    assert sorted(watch.snapshot()[1]) == ["a", "b"]

    endless = [("watch", forbidden()) for _ in range(30)]
    api = FakeApi(("list", ({"a": pod("a")}, "5")), ("watch", [LONG]), *endless)
    watch = run(api)
    with pytest.raises(LauncherError, match="cannot watch pods"):
        watch.snapshot()
    assert 15.0 <= sum(api.pauses) <= 18.0
