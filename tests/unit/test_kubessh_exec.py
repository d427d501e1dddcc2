"""kubessh against a real TLS websocket server speaking the exec channel protocol (tests/fakeapi.py):
the error channel parsed strictly, the pod's uid checked before and inside the exec, bounded waits,
keepalive, and unusable credentials as one line."""
from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kubessh import cli, server, wsexec
from kubessh.args import parse
from kubessh.errors import Exit
from tests.fakeapi import FakeApi, FakePod, serving

ENV = {"LAUNCHER_GROUP_KEY": "k1", "LAUNCHER_NAMESPACE": "ns1"}
UIDS = {"KUBESSH_POD_UIDS": json.dumps({"w-0": "uid-lead", "w-0-1": "uid-old"})}


@pytest.fixture(autouse=True)
def quiet_stdin() -> Iterator[None]:
    """kubessh streams fd 0 to the pod: make it /dev/null, whatever runs the tests."""
    saved = os.dup(0)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    try:
        yield
    finally:
        os.dup2(saved, 0)
        os.close(saved)


def kubessh(api: FakeApi, monkeypatch: pytest.MonkeyPatch, *argv: str, env: dict[str, str] | None = None) -> int:
    """kubessh's main as mpirun runs it, with ``api`` as the API server."""
    monkeypatch.setattr(server, "load", lambda environ: api.endpoint)
    for name, value in {**ENV, **(env or {})}.items():
        monkeypatch.setenv(name, value)
    return cli.main(list(argv))


def one_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("kubessh: "), err
    return lines[0]


def status(body: Any) -> bytes:
    return b"\x03" + (body if isinstance(body, bytes) else json.dumps(body).encode())


def failure(causes: list[dict[str, Any]] | None) -> dict[str, Any]:
    details = {} if causes is None else {"details": {"causes": causes}}
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NonZeroExitCode",
            "message": "command terminated with non-zero exit code", **details}


@pytest.mark.parametrize(("answer", "code", "line"), [
    (status(b'{"status": "Failure", "reas'), 255,
     "kubessh: exec in w-0-1: the error channel sent malformed JSON, not a metav1.Status: "
     "'{\"status\": \"Failure\", \"reas'"),
    (status(failure([{"reason": "ExitCode", "message": "256"}])), 255,
     "kubessh: exec in w-0-1: the error channel's exit code '256' is not an integer from 1 to 255: "),
    (status(failure(None)), 255,
     "kubessh: exec in w-0-1 failed: command terminated with non-zero exit code (a Failure with reason "
     "'NonZeroExitCode' and no exit code)"),
    (status(failure([{"reason": "ExitCode", "message": "3"}])), 3, None),
    (status({"kind": "Status", "apiVersion": "v1", "status": "Success"}), 0, None),
    (status([1, 2]), 255, "kubessh: exec in w-0-1: the error channel sent no metav1.Status with status "
                          "Success or Failure: '[1, 2]'"),
    (status(failure([{"reason": "ExitCode", "message": "0"}])), 255,
     "kubessh: exec in w-0-1: the error channel's exit code '0' is not an integer from 1 to 255: "),
], ids=["malformed", "exit-256", "no-causes", "exit-3", "success", "not-a-status", "failure-with-0"])
def test_the_error_channel_is_read_strictly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capfd: pytest.CaptureFixture[str], answer: bytes, code: int,
                                            line: str | None) -> None:
    frames = [b"\x01out\n", b"\x02err\n", answer]
    with serving(tmp_path, FakeApi({"w-0-1": FakePod("w-0-1", "uid-old")}, frames=frames)) as api:
        assert kubessh(api, monkeypatch, "w-0-1", "hostname") == code
    out, err = capfd.readouterr()
    assert out == "out\n" and err.startswith("err\n")
    if line is None:
        assert err == "err\n"
    else:
        assert one_line(err.removeprefix("err\n")).startswith(line)


def test_v5_is_spoken_when_offered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capfd: pytest.CaptureFixture[str]) -> None:
    api = FakeApi({"w-0-1": FakePod("w-0-1", "uid-old")}, protocol="v5.channel.k8s.io",
                  frames=[status(failure([{"reason": "ExitCode", "message": "7"}]))])
    with serving(tmp_path, api):
        assert kubessh(api, monkeypatch, "w-0-1", "true") == 7
    assert capfd.readouterr() == ("", "")


def pods(container_uid: str | None) -> dict[str, FakePod]:
    env = {} if container_uid is None else {"LAUNCHER_POD_UID": container_uid}
    return {"w-0-1": FakePod("w-0-1", "uid-old", env=env)}


def test_a_pod_replaced_before_the_read_is_refused_and_nothing_execs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    replaced = {"w-0-1": FakePod("w-0-1", "uid-new", env={"LAUNCHER_POD_UID": "uid-new"})}
    with serving(tmp_path, FakeApi(replaced)) as api:
        assert kubessh(api, monkeypatch, "w-0-1", f"touch {tmp_path / 'ran'}", env=UIDS) == Exit.REFUSED
    assert one_line(capfd.readouterr().err) == (
        "kubessh: refusing pod w-0-1: its uid is uid-new, not uid-old that the leader discovered (replaced "
        "under the same name); nothing was run")
    assert api.execs == [] and not (tmp_path / "ran").exists()


@pytest.mark.parametrize(("container_uid", "line"), [
    ("uid-new", "kubessh: pod w-0-1 has LAUNCHER_POD_UID uid-new, not uid-old that the leader discovered "
                "(replaced under the same name); nothing was started"),
    (None, "kubessh: pod w-0-1 lacks the variable LAUNCHER_POD_UID (set it from metadata.uid through the "
           "downward API); nothing was started"),
], ids=["replaced-between-read-and-exec", "no-variable"])
@pytest.mark.parametrize("words", [["touch", "MARKER"], ["touch", "MARKER", "#", "orted"]], ids=["plain", "daemon"])
def test_the_exec_itself_refuses_a_container_of_another_pod(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str],
        container_uid: str | None, line: str, words: list[str]) -> None:
    # The API still shows the pod the leader discovered; the container the exec lands in is another's.
    marker = tmp_path / "ran"
    words = [str(marker) if w == "MARKER" else w for w in words]
    with serving(tmp_path, FakeApi(pods(container_uid))) as api:
        assert kubessh(api, monkeypatch, "w-0-1", *words, env={**UIDS, "TMPDIR": str(tmp_path)}) == 255
    assert one_line(capfd.readouterr().err) == line
    assert len(api.execs) == 1
    time.sleep(0.2)
    assert not marker.exists() and not list(tmp_path.glob("kubessh-*"))


def test_the_discovered_pod_runs_the_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capfd: pytest.CaptureFixture[str]) -> None:
    with serving(tmp_path, FakeApi(pods("uid-old"))) as api:
        assert kubessh(api, monkeypatch, "w-0-1", "echo", "'a  b'", ";", "exit", "3", env=UIDS) == 3
        assert kubessh(api, monkeypatch, "--probe", "w-0-1", env=UIDS) == 0
        monkeypatch.delenv("KUBESSH_POD_UIDS")
        api.pods["w-0-1"].env.clear()
        assert kubessh(api, monkeypatch, "w-0-1", "echo", "unchecked") == 0  # no map: no uid to check
    assert capfd.readouterr() == ("a  b\nunchecked\n", "")


def test_a_probe_checks_the_uid_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capfd: pytest.CaptureFixture[str]) -> None:
    with serving(tmp_path, FakeApi(pods("uid-new"))) as api:
        assert kubessh(api, monkeypatch, "--probe", "w-0-1", env=UIDS) == 255
    assert "has LAUNCHER_POD_UID uid-new, not uid-old" in one_line(capfd.readouterr().err)


@pytest.mark.parametrize(("uids", "code", "line"), [
    ({"KUBESSH_POD_UIDS": json.dumps({"w-0": "uid-lead"})}, Exit.REFUSED,
     "kubessh: refusing pod w-0-1: not one of the 1 pods the leader discovered (KUBESSH_POD_UIDS)"),
    ({"KUBESSH_POD_UIDS": '{"w-0-1": "uid old"}'}, Exit.USAGE,
     "kubessh: KUBESSH_POD_UIDS='{\"w-0-1\": \"uid old\"}': not a JSON object of pod names to uids; the leader "
     "sets it (unset it to exec by hand)"),
])
def test_the_uid_map_is_checked_before_any_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capfd: pytest.CaptureFixture[str], uids: dict[str, str],
                                                code: int, line: str) -> None:
    with serving(tmp_path, FakeApi(pods("uid-old"))) as api:
        assert kubessh(api, monkeypatch, "w-0-1", "true", env=uids) == code
    assert one_line(capfd.readouterr().err) == line and api.execs == []


def test_a_detached_launch_waits_a_bounded_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capfd: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cli, "DETACH_TIMEOUT_S", 0.5)
    api = FakeApi(pods("uid-old"), frames=[], hang_s=20)  # the stream stays open without a status
    with serving(tmp_path, api):
        t0 = time.monotonic()
        assert kubessh(api, monkeypatch, "w-0-1", "prted", env={"KUBESSH_DETACH_CONFIRM_S": "0.1"}) == 255
        took = time.monotonic() - t0
    assert took < 5
    assert one_line(capfd.readouterr().err) == (
        "kubessh: no exit status from w-0-1 within 0.6s of the exec; giving up (what it started may still run there)")


def test_the_exec_socket_has_tcp_keepalive(tmp_path: Path) -> None:
    with serving(tmp_path, FakeApi(pods("uid-old"), frames=[])) as api:
        assert api.endpoint is not None
        url = wsexec.exec_url(api.endpoint, "ns1", "w-0-1", "main", ["true"], False)
        ws = wsexec.connect(api.endpoint, "ns1", "w-0-1", url, 5)
        try:
            sock = ws.sock
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            for name, value in wsexec.KEEPALIVE.items():
                if hasattr(socket, name):
                    assert sock.getsockopt(socket.IPPROTO_TCP, getattr(socket, name)) == value, name
        finally:
            ws.close(timeout=0.1)
    assert hasattr(socket, "TCP_KEEPIDLE") or os.uname().sysname != "Linux"


def sa_dir(tmp_path: Path, *files: str) -> Path:
    d = tmp_path / "sa"
    d.mkdir()
    for name in files:
        (d / name).write_text("ns1" if name == "namespace" else "token-text")
    return d


@pytest.mark.parametrize(("files", "needle"), [
    (("token", "namespace"), "sa/ca.crt (No such file or directory)"),
    (("namespace",), "sa/token (Is a directory)"),
], ids=["no-ca", "unreadable-token"])
def test_unusable_service_account_files_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capfd: pytest.CaptureFixture[str], files: tuple[str, ...],
                                                     needle: str) -> None:
    d = sa_dir(tmp_path, *files)
    if "token" not in files:
        (d / "token").mkdir()
    monkeypatch.setattr(server, "load", lambda environ: server.in_cluster(environ, d))
    for name, value in {**ENV, "KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": "1"}.items():
        monkeypatch.setenv(name, value)
    assert cli.main(["w-0-1", "true"]) == Exit.CREDENTIALS == 251
    line = one_line(capfd.readouterr().err)
    assert needle in line and "mount the pod's ServiceAccount token" in line, line


def test_no_token_and_no_kubeconfig_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capfd: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    assert cli.main(["w-0-1", "true"]) == Exit.CREDENTIALS
    assert "no usable kubeconfig" in one_line(capfd.readouterr().err)


def test_parse_reads_the_expected_uid_once() -> None:
    assert parse(["w-0-1", "true"], {**ENV, **UIDS}).expected_uid == "uid-old"
    assert parse(["w-0-1", "true"], ENV).expected_uid is None


def test_the_check_inside_the_exec_can_be_left_to_the_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capfd: pytest.CaptureFixture[str]) -> None:
    """KUBESSH_CHECK_UID_IN_EXEC=no (kwok, whose exec lacks the container's environment): the read still
    refuses a replaced pod, the exec runs without the in-container check."""
    with serving(tmp_path, FakeApi(pods(None))) as api:
        assert kubessh(api, monkeypatch, "w-0-1", "echo", "ran", env={**UIDS, "KUBESSH_CHECK_UID_IN_EXEC": "no"}) == 0
    assert capfd.readouterr().out == "ran\n"
    replaced = {"w-0-1": FakePod("w-0-1", "uid-new")}
    with serving(tmp_path, FakeApi(replaced)) as api:
        env = {**UIDS, "KUBESSH_CHECK_UID_IN_EXEC": "no"}
        assert kubessh(api, monkeypatch, "w-0-1", "echo", "ran", env=env) == Exit.REFUSED
    assert api.execs == []
