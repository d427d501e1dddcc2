"""Every configuration rule, through the real CLI: one line, the value, the fix, the code."""

from __future__ import annotations

from pathlib import Path

import pytest

from launcher.cli import main
from launcher.errors import ExitCode
from tests.conftest import REPO

TOY_REPO = REPO / "launcher" / "examples" / "model_repository"

BAD_INPUTS = [
    # (argv, environment, exit code, words the message must contain)
    (["--tp", "0"], {}, ExitCode.CONFIG_INVALID, ["--tp=0", "positive", "LAUNCHER_TP"]),
    (["--tp", "-2"], {}, ExitCode.CONFIG_INVALID, ["--tp=-2", "positive"]),
    (["--tp", "abc"], {}, ExitCode.CONFIG_INVALID, ["--tp", "abc", "not a valid integer"]),
    (["--pp", "0"], {}, ExitCode.CONFIG_INVALID, ["--pp=0", "positive", "LAUNCHER_PP"]),
    (["--gpus-per-pod", "0"], {}, ExitCode.CONFIG_INVALID, ["--gpus-per-pod=0", "positive"]),
    (["--tp", "3", "--gpu_per_node", "2"], {}, ExitCode.CONFIG_INVALID, ["--gpus-per-pod=2", "multiple", "tp*pp"]),
    (["--tp", "4", "--gpus-per-pod", "2"], {"LWS_GROUP_SIZE": "3"}, ExitCode.CONFIG_INVALID,
     ["LWS_GROUP_SIZE=3", "needs 2", "LeaderWorkerSet size"]),
    ([], {"LWS_GROUP_SIZE": "two"}, ExitCode.CONFIG_INVALID, ["LWS_GROUP_SIZE", "two"]),
    ([], {"LAUNCHER_TP": "x"}, ExitCode.CONFIG_INVALID, ["LAUNCHER_TP", "x"]),
    (["--http-port", "8001"], {}, ExitCode.CONFIG_INVALID, ["--grpc-port=8001", "already taken by --http-port"]),
    (["--health-port", "8002"], {}, ExitCode.CONFIG_INVALID, ["--health-port=8002", "--metrics-port"]),
    (["--http-port", "0"], {}, ExitCode.CONFIG_INVALID, ["--http-port=0", "between 1 and 65535"]),
    (["--grpc-port", "70000"], {}, ExitCode.CONFIG_INVALID, ["--grpc-port=70000", "65535"]),
    (["--model", "a/b"], {}, ExitCode.CONFIG_INVALID, ["--model='a/b'", "directory name"]),
    (["--env", "=x"], {}, ExitCode.CONFIG_INVALID, ["--env '=x'", "NAME=VALUE or NAME"]),
    (["--env", "NO-DASH"], {}, ExitCode.CONFIG_INVALID, ["--env 'NO-DASH'", "letters, digits and _"]),
    (["--env", "1BAD=x"], {}, ExitCode.CONFIG_INVALID, ["--env '1BAD'", "letters, digits"]),
    (["--forward-env", "NC-CL"], {}, ExitCode.CONFIG_INVALID, ["--forward-env 'NC-CL'"]),
    (["--startup-timeout", "0"], {}, ExitCode.CONFIG_INVALID, ["--startup-timeout=0", "positive"]),
    (["--stop-grace-period", "-1"], {}, ExitCode.CONFIG_INVALID, ["--stop-grace-period=-1", "negative"]),
    (["--progress-interval", "0"], {}, ExitCode.CONFIG_INVALID,
     ["--progress-interval=0", "positive", "LAUNCHER_PROGRESS_INTERVAL"]),
    (["--stall-warning", "-5"], {}, ExitCode.CONFIG_INVALID,
     ["--stall-warning=-5", "positive", "LAUNCHER_STALL_WARNING"]),
    ([], {"LAUNCHER_PROGRESS_INTERVAL": "soon"}, ExitCode.CONFIG_INVALID, ["LAUNCHER_PROGRESS_INTERVAL", "soon"]),
    (["--model-load-threads", "0"], {}, ExitCode.CONFIG_INVALID, ["--model-load-threads=0"]),
    (["--log-format", "xml"], {}, ExitCode.CONFIG_INVALID, ["--log-format", "xml", "text", "json"]),
    (["--hosts", "a,b", "--lws-name", "x", "--tp", "2", "--gpus-per-pod", "1"], {}, ExitCode.CONFIG_INVALID,
     ["--hosts and --lws-name", "keep one"]),
    (["--hosts", "a,b,c", "--tp", "2", "--gpus-per-pod", "1"], {}, ExitCode.CONFIG_INVALID,
     ["--hosts=a,b,c", "3 pods given", "needs 2"]),
    (["--group-index", "-1"], {}, ExitCode.CONFIG_INVALID, ["--group-index=-1"]),
    (["--hosts", "Pod_0,b", "--tp", "2"], {}, ExitCode.CONFIG_INVALID, ["'Pod_0' is not a pod name", "POD[=ADDRESS]"]),
    (["--hosts", "a=10.0.0.300,b", "--tp", "2"], {}, ExitCode.CONFIG_INVALID,
     ["'10.0.0.300' (of a) is not an IPv4 or IPv6 address"]),
    (["--hosts", "a,a", "--tp", "2"], {}, ExitCode.CONFIG_INVALID, ["a listed twice"]),
    (["--http-port", "70000"], {}, ExitCode.CONFIG_INVALID, ["--http-port=70000", "between 1 and 65535"]),
    (["--no-such-flag"], {}, ExitCode.USAGE, ["No such option", "--no-such-flag"]),
]


@pytest.mark.parametrize("argv,env,code,words", BAD_INPUTS, ids=[" ".join(b[0]) or str(b[1]) for b in BAD_INPUTS])
def test_bad_input_is_one_clear_line(
    argv: list[str], env: dict[str, str], code: ExitCode, words: list[str],
    clean_env: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    # dry-run validates like the leader but needs no model repository or cluster.
    command = ["leader"] if "--log-format" in argv else ["dry-run", "--mpi", "5.0"]
    result = main([*command, *argv])
    err = capsys.readouterr().err
    assert result == code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("launcher: error: ")
    for word in words:
        assert word in lines[0]
    assert "Traceback" not in err


def test_leader_rejects_missing_model_repository(clean_env: None, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["leader", "--hosts", "a", "--model-repo", str(tmp_path / "nope")])
    err = capsys.readouterr().err
    assert code == ExitCode.MODEL_REPOSITORY
    assert f"--model-repo={tmp_path / 'nope'}" in err and "does not exist" in err


def test_leader_rejects_model_absent_from_repository(clean_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["leader", "--hosts", "a", "--model-repo", str(TOY_REPO), "--model", "tensorrt_llm"])
    err = capsys.readouterr().err
    assert code == ExitCode.MODEL_REPOSITORY
    assert "--model=tensorrt_llm: no such model" in err and "toy_tp" in err


@pytest.mark.parametrize("argv,words", [
    (["worker", "--health-port", "70000"], ["--health-port=70000", "between 1 and 65535"]),
    (["local", "--ranks", "100000"], ["--ranks=100000", "between 1 and 256"]),
    (["local", "--ranks", "0"], ["--ranks=0"]),
])
def test_ranges_of_worker_and_local_are_one_line(argv: list[str], words: list[str], clean_env: None,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == ExitCode.CONFIG_INVALID
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and all(word in err for word in words), err


def test_leader_rejects_model_without_config(clean_env: None, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "m" / "1").mkdir(parents=True)
    code = main(["leader", "--hosts", "a", "--model-repo", str(tmp_path), "--model", "m"])
    assert code == ExitCode.MODEL_REPOSITORY
    assert "config.pbtxt: missing" in capsys.readouterr().err


def test_leader_rejects_wrong_host_count(clean_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["leader", "--hosts", "a,b", "--tp", "4", "--gpus-per-pod", "4"])
    assert code == ExitCode.CONFIG_INVALID
    assert "2 pods given but tp*pp/gpus-per-pod=4/4 needs 1" in capsys.readouterr().err


def test_leader_rejects_duplicate_hosts(clean_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["leader", "--hosts", "a,a", "--tp", "2"])
    assert code == ExitCode.CONFIG_INVALID
    assert "listed twice" in capsys.readouterr().err


def test_missing_mpirun_is_named(clean_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["local", "--mpirun", "/no/such/mpirun"])
    assert code == ExitCode.MISSING_EXECUTABLE
    assert "--mpirun=/no/such/mpirun" in capsys.readouterr().err


def test_environment_fallbacks_and_tutorial_flags(clean_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from launcher.cli import parse_leader_args

    monkeypatch.setenv("LAUNCHER_TP", "4")
    monkeypatch.setenv("LWS_GROUP_SIZE", "2")
    config = parse_leader_args([
        "--pp=2", "--gpu_per_node=4", "--triton_model_repo_dir=/models", "--stateful_set_group_key=abc",
        "--namespace=ns", "--enable_nsys", "--verbose", "--iso8601",
    ])
    assert (config.tp, config.pp, config.gpus_per_pod, config.pods) == (4, 2, 4, 2)
    assert str(config.model_repo) == "/models"
    assert config.group_key == "abc" and config.namespace == "ns" and config.group_size == 2
    assert config.nsys.enabled and config.iso8601 and config.triton_log_verbose == 1


@pytest.mark.parametrize("argv,line", [
    ([], "launcher: error: --pod-name is not set: Kubernetes discovery accepts only the pods named after this "
         "leader pod; set LAUNCHER_POD_NAME from the downward API (fieldRef metadata.name), or pass static --hosts"),
    (["--pod-name=llama-0"], "launcher: error: --pod-uid is not set: Kubernetes discovery accepts only the pods "
     "named after this leader pod; set LAUNCHER_POD_UID from the downward API (fieldRef metadata.uid), or pass "
     "static --hosts"),
    (["--pod-name=llama", "--pod-uid=u1"], "launcher: error: --pod-name='llama': a LeaderWorkerSet leader pod is "
     "named <lws>-<group index>; set LAUNCHER_POD_NAME from the leader pod's downward API (fieldRef metadata.name)"),
])
def test_kubernetes_discovery_needs_the_leaders_own_name_and_uid(
        argv: list[str], line: str, clean_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["leader", "--group-key=k", "--namespace=ns", *argv]) == ExitCode.CONFIG_INVALID
    assert capsys.readouterr().err.strip().splitlines() == [line]
