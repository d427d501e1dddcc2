"""The CLI through click's runner: dry-run output, help, the server.py shim."""

from __future__ import annotations

import json
import subprocess
import sys

from click.testing import CliRunner

from launcher.cli import cli
from tests.conftest import REPO


def test_dry_run_json_for_a_synthesized_lws_group(clean_env: None) -> None:
    result = CliRunner().invoke(cli, ["dry-run", "--tp", "4", "--pp", "2", "--gpu_per_node", "4",
                                      "--lws-name", "llama", "--group-index", "3", "--mpi", "4.1",
                                      "--output", "json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert plan["hosts"] == ["llama-3:4", "llama-3-1:4"]
    assert [(r["rank"], r["pod"], r["local_rank"]) for r in plan["ranks"]] == [
        (i, "llama-3" if i < 4 else "llama-3-1", i % 4) for i in range(8)
    ]
    assert plan["argv"][0] == "mpirun" and "plm_rsh_agent" in plan["argv"]
    assert "LAUNCHER_LAUNCH_ID" in plan["env"]


def test_dry_run_text_with_hosts(clean_env: None) -> None:
    result = CliRunner().invoke(cli, ["dry-run", "--tp", "2", "--hosts", "p0,p1", "--mpi", "5.0"])
    assert result.exit_code == 0, result.output
    assert "0     p0   0    server" in result.output
    assert "1     p1   0    model tensorrt_llm" in result.output
    assert "--prtemca plm_ssh_agent kubessh" in result.output


def test_dry_run_reads_environment(clean_env: None) -> None:
    env = {"LAUNCHER_TP": "2", "LAUNCHER_GPUS_PER_POD": "2", "LAUNCHER_MODEL": "ens", "LAUNCHER_HTTP_PORT": "9100"}
    result = CliRunner().invoke(cli, ["dry-run", "--mpi", "5.0", "--output", "json"], env=env)
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert "--http-port=9100" in plan["ranks"][0]["argv"]
    assert "--load-model=ens" in plan["ranks"][1]["argv"]


def test_help_lists_every_command() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    for command in ("leader", "worker", "local", "dry-run"):
        assert command in result.output


def test_server_py_is_the_same_program() -> None:
    done = subprocess.run([sys.executable, str(REPO / "server.py"), "leader", "--tp", "0"],
                          capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 64
    assert done.stderr.strip() == ("server.py: error: --tp=0: the tensor-parallel size must be positive; "
                                   "set --tp (or LAUNCHER_TP) to 1 or more")


def test_dry_run_hides_environment_values_unless_asked(clean_env: None) -> None:
    args = ["dry-run", "--tp", "2", "--hosts", "p0,p1", "--mpi", "5.0", "--env", "HF_TOKEN=hf_secret"]
    hidden = CliRunner().invoke(cli, args)
    assert hidden.exit_code == 0 and "HF_TOKEN=<hidden>" in hidden.output and "hf_secret" not in hidden.output
    as_json = CliRunner().invoke(cli, [*args, "--output", "json"])
    assert json.loads(as_json.output)["env"]["HF_TOKEN"] == "<hidden>"
    shown = CliRunner().invoke(cli, [*args, "--show-values"])
    assert "HF_TOKEN=hf_secret" in shown.output


def test_a_bare_env_name_passes_on_the_leaders_variable(clean_env: None) -> None:
    """The chart's rankEnv from a Secret: the name in the argv, the value only in the environment."""
    result = CliRunner().invoke(cli, ["dry-run", "--tp", "2", "--hosts", "p0,p1", "--mpi", "5.0", "--env", "HF_TOKEN",
                                      "--output", "json"], env={"HF_TOKEN": "hf_secret"})
    plan = json.loads(result.output)
    assert "HF_TOKEN" in plan["forwarded"] and "HF_TOKEN" not in plan["env"]
    assert "hf_secret" not in result.output
    assert plan["argv"][plan["argv"].index("HF_TOKEN") - 1] == "-x"
