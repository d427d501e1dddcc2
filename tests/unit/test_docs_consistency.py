"""README.md and docs/deployment-guide.md against the code they describe.

Each test reads one side from the documents and the other from the code, so
a change to either that is not made to both fails here:

- the README's exit-code table lists exactly ``launcher.errors.ExitCode``,
  and the guide's troubleshooting table covers every code;
- every launcher option the documents name exists on the command it is
  given to (read from the click commands themselves), every option of
  ``launcher leader`` is in the README's configuration table, and every
  ``launcher <command>`` named exists;
- every chart value path the documents name (``startup.timeoutSeconds``,
  ``--set autoscaling.minReplicas=2``) exists in chart/values.yaml;
- every repository file they name exists;
- docs/engine-build-job.yaml is a valid Job that builds what the worked
  example's values serve.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from launcher.errors import ExitCode
from tests.conftest import REPO

README = REPO / "README.md"
GUIDE = REPO / "docs" / "deployment-guide.md"
DOCS = (README, GUIDE)
VALUES = REPO / "chart" / "values.yaml"
JOB = REPO / "docs" / "engine-build-job.yaml"
EXAMPLE_405B = REPO / "chart" / "ci" / "llama-405b-values.yaml"

# Options the documents name that belong to other programs, with the program.
# A launcher option renamed or removed is not here, so its old name fails.
FOREIGN_OPTIONS = {
    # mpirun (README: how the plan calls it)
    "--mca": "mpirun", "--prtemca": "mpirun", "--bind-to": "mpirun", "--map-by": "mpirun",
    "--allow-run-as-root": "mpirun", "--noprefix": "mpirun",
    # tritonserver (README: what the launcher passes it)
    "--log-verbose": "tritonserver", "--model-load-thread-count": "tritonserver",
    "--exit-timeout-secs": "tritonserver",
    # kubessh
    "--probe": "kubessh",
    # TensorRT-LLM's trtllm-build (guide, section 2)
    "--use_custom_all_reduce": "trtllm-build", "--max_seq_len": "trtllm-build",
    "--max_output_len": "trtllm-build", "--tp_size": "convert_checkpoint.py", "--pp_size": "convert_checkpoint.py",
    # helm and kubectl
    "--api-versions": "helm", "--previous": "kubectl logs",
    # docker
    "--build-arg": "docker build", "--entrypoint": "docker run",
    # mpirun (the plan's -x) and the NCCL tests' MPIJob (-N)
    "-x": "mpirun", "-N": "mpirun",
}

CODE_BLOCK = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
INLINE_CODE = re.compile(r"`([^`\n]+)`")
LONG_OPTION = re.compile(r"(?<![\w-])--[A-Za-z0-9][\w-]*")
SHORT_OPTION = re.compile(r"(?<![\w-])-[A-Za-z](?![\w-])")
INVOCATION = re.compile(r'(?:\blauncher|\bserver\.py|"\$IMAGE")[ \t]+([a-z][a-z-]*)([^\n|;&`]*)')
VALUE_PATH = re.compile(r"[A-Za-z]\w*(?:\.[A-Za-z][\w-]*)+")
SET_VALUE = re.compile(r"--set[ \t]+([\w.-]+)=")
REPO_PATH = re.compile(r"(?:chart|docs|launcher|benchmarks|tests|cluster|scripts|kubessh)/[\w./-]*")


# ---------------------------------------------------------------------------
# Reading the documents.


def code_blocks(text: str) -> list[str]:
    """Fenced blocks, with backslash-continued lines joined."""
    return [re.sub(r"\\\n\s*", " ", block) for block in CODE_BLOCK.findall(text)]


def prose(text: str) -> str:
    return CODE_BLOCK.sub("", text)


def inline_code(text: str) -> list[str]:
    return INLINE_CODE.findall(prose(text))


def split_row(line: str) -> list[str]:
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def tables(text: str) -> list[tuple[list[str], list[list[str]]]]:
    """(header cells, rows of cells) of every Markdown table."""
    found: list[tuple[list[str], list[list[str]]]] = []
    lines = prose(text).splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("|") and i + 1 < len(lines) and re.match(r"^\|[-| :]+\|$", lines[i + 1].strip()):
            header = split_row(lines[i])
            rows = []
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(split_row(lines[i]))
                i += 1
            found.append((header, rows))
        else:
            i += 1
    return found


def table_after(text: str, heading: str) -> tuple[list[str], list[list[str]]]:
    start = text.index(heading)
    section = text[start:]
    return tables(section)[0]


def without_original_columns(text: str) -> str:
    """The text with the first column of tables headed "original..." blanked: those name the
    original tutorial's values, not this chart's."""
    out = []
    in_original = False
    for line in text.splitlines():
        if line.startswith("|"):
            cells = split_row(line)
            if cells and cells[0].lower().startswith("original"):
                in_original = True
            if in_original and cells:
                line = "| |" + "|".join(f" {c} " for c in cells[1:]) + "|"
        else:
            in_original = False
        out.append(line)
    return "\n".join(out)


# ---------------------------------------------------------------------------
# Reading the code.


@cache
def commands() -> dict[str, click.Command]:
    from launcher.cli import cli

    ctx = click.Context(cli)
    found = {}
    for name in cli.list_commands(ctx):
        command = cli.get_command(ctx, name)
        assert command is not None, name
        found[name] = command
    return found


def option_names(command: click.Command, hidden: bool = True) -> set[str]:
    names = {"--help", "-h"}
    for param in command.params:
        if isinstance(param, click.Option) and (hidden or not param.hidden):
            names.update(param.opts)
            names.update(param.secondary_opts)
    return names


@cache
def all_option_names() -> frozenset[str]:
    from launcher.cli import cli

    names = {opt for param in cli.params if isinstance(param, click.Option) for opt in param.opts}
    for command in commands().values():
        names |= option_names(command)
    return frozenset(names)


@cache
def chart_values() -> dict[str, Any]:
    values = yaml.safe_load(VALUES.read_text())
    assert isinstance(values, dict)
    return values


def value_path_exists(path: str) -> bool:
    node: Any = chart_values()
    for key in path.split("."):
        if not isinstance(node, dict):
            return False
        if key not in node:
            return node == {}  # a free-form map (annotations, rankEnv, resources.extra): any key
        node = node[key]
    return True


# ---------------------------------------------------------------------------
# Exit codes.


def readme_exit_table() -> list[list[str]]:
    header, rows = table_after(README.read_text(), "### Exit codes")
    assert [h.lower() for h in header[:2]] == ["code", "meaning"], header
    return rows


def test_readme_exit_code_table_lists_exactly_the_exit_codes() -> None:
    rows = readme_exit_table()
    cells = [row[0] for row in rows]
    numbers = [int(cell) for cell in cells if cell.isdigit()]
    words = [cell for cell in cells if not cell.isdigit()]
    assert len(numbers) == len(set(numbers)), f"a code is listed twice: {numbers}"
    assert set(numbers) == {int(code) for code in ExitCode}, (
        f"README lists {sorted(numbers)}; launcher.errors.ExitCode has {sorted(int(c) for c in ExitCode)}")
    assert words == ["other"], f"rows other than codes and 'other' (mpirun's status): {words}"
    for row in rows:
        assert row[1], f"code {row[0]} has no meaning"


def test_guide_troubleshooting_covers_every_exit_code() -> None:
    header, rows = table_after(GUIDE.read_text(), "### Exit codes: symptom, cause, fix")
    assert header[0].lower() == "exit code" and len(header) == 4, header
    numbers = [int(row[0]) for row in rows if row[0].isdigit()]
    others = [row[0] for row in rows if not row[0].isdigit()]
    assert set(numbers) == {int(code) for code in ExitCode}, (
        f"the guide's table has {sorted(numbers)}; ExitCode has {sorted(int(c) for c in ExitCode)}")
    assert len(numbers) == len(set(numbers))
    assert len(others) == 1 and others[0].startswith("mpirun"), others
    for row in rows:
        assert all(row[1:]), f"exit code {row[0]}: every column needs text"


# ---------------------------------------------------------------------------
# Launcher options and commands.


def invocations(text: str) -> list[tuple[str, str]]:
    """(command, its arguments) of every launcher call in code: fenced blocks and inline spans."""
    found = []
    for code in code_blocks(text) + inline_code(text):
        for match in INVOCATION.finditer(code):
            arguments = re.sub(r"\s#.*$", "", match.group(2))
            found.append((match.group(1), arguments))
    return found


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_launcher_commands_named_in_the_docs_exist(doc: Path) -> None:
    named = {command for command, _ in invocations(doc.read_text())}
    assert named, f"{doc.name} names no launcher command"
    unknown = named - set(commands())
    assert not unknown, f"{doc.name} runs launcher {sorted(unknown)}; the CLI has {sorted(commands())}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_options_given_to_a_launcher_command_are_its_own(doc: Path) -> None:
    checked = 0
    for command, arguments in invocations(doc.read_text()):
        known = option_names(commands()[command])
        for option in LONG_OPTION.findall(arguments) + SHORT_OPTION.findall(arguments):
            assert option in known, f"{doc.name}: launcher {command} has no option {option} ({arguments.strip()})"
            checked += 1
    assert checked, f"{doc.name} gives no launcher command an option"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_options_named_in_prose_exist(doc: Path) -> None:
    """An inline `--option` is the launcher's, or one of FOREIGN_OPTIONS' programs'."""
    checked = 0
    for span in inline_code(doc.read_text()):
        if not span.startswith("-"):
            continue
        for option in LONG_OPTION.findall(span) + SHORT_OPTION.findall(span.split(" ")[0]):
            assert option in all_option_names() or option in FOREIGN_OPTIONS, (
                f"{doc.name} names `{span}`: {option} is no launcher option (nor listed in FOREIGN_OPTIONS)")
            checked += 1
    assert checked


def readme_configuration_options() -> set[str]:
    header, rows = table_after(README.read_text(), "## Configuration")
    assert header[0].startswith("option"), header
    return {option for row in rows for option in LONG_OPTION.findall(row[0]) + SHORT_OPTION.findall(row[0])}


def test_readme_configuration_table_has_every_leader_option() -> None:
    listed = readme_configuration_options()
    missing = option_names(commands()["leader"], hidden=False) - listed - {"--help", "-h"}
    assert not missing, f"launcher leader options missing from the README's configuration table: {sorted(missing)}"
    unknown = listed - all_option_names()
    assert not unknown, f"the README's configuration table lists options the CLI lacks: {sorted(unknown)}"


def test_readme_configuration_table_environment_variables_are_the_options() -> None:
    """Each row's environment variable is the one its option reads (click's envvar)."""
    header, rows = table_after(README.read_text(), "## Configuration")
    assert header[1] == "environment", header
    by_option = {}
    for command in commands().values():
        for param in command.params:
            if isinstance(param, click.Option) and param.envvar:
                for opt in param.opts:
                    by_option[opt] = param.envvar
    for row in rows:
        options = LONG_OPTION.findall(row[0])
        variables = re.findall(r"`([A-Z][A-Z0-9_]*)`", row[1])
        if len(options) == 1 and len(variables) == 1:
            assert by_option.get(options[0]) == variables[0], (
                f"README: {options[0]} reads {by_option.get(options[0])}, the table says {variables[0]}")


# ---------------------------------------------------------------------------
# Chart values.


def value_paths(text: str) -> set[str]:
    """Chart value paths named in inline code or in --set, outside the original-values columns."""
    text = without_original_columns(text)
    found = set()
    for span in inline_code(text):
        token = re.split(r"[\s=:]", span, maxsplit=1)[0]
        if VALUE_PATH.fullmatch(token) and token.split(".")[0] in chart_values():
            found.add(token)
    for code in code_blocks(text) + inline_code(text):
        found.update(SET_VALUE.findall(code))
    return found


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_chart_value_paths_in_the_docs_exist(doc: Path) -> None:
    paths = value_paths(doc.read_text())
    if doc == GUIDE:
        assert {"startup.timeoutSeconds", "autoscaling.minReplicas", "restarts.onPermanentError"} <= paths
    missing = sorted(p for p in paths if not value_path_exists(p))
    assert not missing, f"{doc.name} names chart values that chart/values.yaml lacks: {missing}"


def test_value_path_reading_sees_a_missing_value() -> None:
    assert value_path_exists("startup.timeoutSeconds")
    assert not value_path_exists("startup.timeoutSecond")
    assert not value_path_exists("startup.timeoutSeconds.more")
    assert value_paths("`startup.timeoutSecond` and `--set lws.replica=2`") == {
        "startup.timeoutSecond", "lws.replica"}
    table = "| original value | here |\n|---|---|\n| `logging.tritonServer.verbose` | `logging.verbose` |\n"
    assert value_paths(table) == {"logging.verbose"}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_repository_files_named_in_the_docs_exist(doc: Path) -> None:
    named = {span.rstrip("/.") for span in inline_code(doc.read_text()) if REPO_PATH.fullmatch(span)}
    named |= {link for link in re.findall(r"\]\(([\w./-]+)\)", doc.read_text()) if not link.startswith("http")}
    missing = sorted(p for p in named if not (doc.parent / p).exists() and not (REPO / p).exists())
    assert not missing, f"{doc.name} names files that do not exist: {missing}"


def test_guide_does_not_call_existing_commands_planned() -> None:
    for doc in DOCS:
        for sentence in re.split(r"(?<=[.!?])\s", doc.read_text()):
            lowered = sentence.lower()
            assert not ("planned" in lowered and ("preflight" in lowered or "launcher" in lowered)), (
                f"{doc.name}: {sentence.strip()!r}")


# ---------------------------------------------------------------------------
# The engine build Job.


@cache
def job() -> dict[str, Any]:
    doc = yaml.safe_load(JOB.read_text())
    assert isinstance(doc, dict)
    return doc


def job_script() -> str:
    container = job()["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][-1] == "-c"
    return str(container["args"][0])


def script_variable(name: str) -> str:
    match = re.search(rf"^{name}=(\S+)$", job_script(), re.M)
    assert match, f"the Job's script sets no {name}"
    return match.group(1)


def test_engine_build_job_is_a_gpu_job_on_the_model_volume() -> None:
    doc = job()
    assert (doc["apiVersion"], doc["kind"]) == ("batch/v1", "Job")
    pod = doc["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert "nvidia.com/gpu.product" in pod["nodeSelector"]
    container = pod["containers"][0]
    resources = container["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 8 == resources["requests"]["nvidia.com/gpu"]
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]
              if "persistentVolumeClaim" in v}
    assert len(claims) == 1
    (volume,) = claims
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    # Mounted where the chart mounts the claim, so the paths written into the configs are the pods'.
    assert mounts[volume] == chart_values()["modelRepository"]["mountPath"]
    assert script_variable("MODELS") == mounts[volume]
    assert "REPLACE_ME" in (container["image"], claims[volume])


def test_engine_build_job_builds_what_the_405b_example_serves() -> None:
    example = yaml.safe_load(EXAMPLE_405B.read_text())
    tp, pp = example["tensorrtLLM"]["parallelism"]["tensor"], example["tensorrtLLM"]["parallelism"]["pipeline"]
    assert (tp, pp, example["gpuPerNode"]) == (8, 2, 8)
    script = job_script()
    models = script_variable("MODELS")
    assert script_variable("ENGINE_DIR") == "$MODELS/engines/llama-3.1-405b/tp8-pp2"
    assert script_variable("REPO").replace("$MODELS", models) == example["modelRepository"]["path"]
    assert "convert_checkpoint.py" in script
    assert re.search(rf'python3 "\$CONVERT" .*--tp_size {tp} --pp_size {pp}', re.sub(r"\\\n\s*", " ", script))
    assert "trtllm-build --checkpoint_dir" in script
    fills = re.findall(r"\$FILL \"\$REPO/(\w+)/config\.pbtxt\" \\\n\s*\"([^\"]+)\"", script)
    filled = {model: dict(item.split(":", 1) for item in subs.split(",")) for model, subs in fills}
    assert set(filled) == {"preprocessing", "postprocessing", "tensorrt_llm", "ensemble"}
    assert filled["tensorrt_llm"]["triton_backend"] == "tensorrtllm"
    assert filled["tensorrt_llm"]["engine_dir"] == "$ENGINE_DIR"
    assert filled["preprocessing"]["tokenizer_dir"] == filled["postprocessing"]["tokenizer_dir"] == "$HF_DIR"


def test_engine_build_job_script_is_valid_shell(tmp_path: Path) -> None:
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    script = tmp_path / "build.sh"
    script.write_text(job_script())
    result = subprocess.run([bash, "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_engine_build_job_matches_the_kubernetes_schema() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    kubernetes_validate.validate(job(), "1.30.0", strict=True)
