"""triton_trt-llm.containerfile: lint clean, every COPY source exists, the
entrypoint is this project's console script, and it is the chart's command."""

from __future__ import annotations

import importlib
import json
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

from chart_helpers import REPO, Helm, container, one, pod_templates

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

CONTAINERFILE = REPO / "triton_trt-llm.containerfile"
PINNED_ARGS = ("BASE_IMAGE", "EFA_INSTALLER_VERSION", "AWS_OFI_NCCL_VERSION", "NCCL_VERSION")


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str
    line: int


def instructions(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped."""
    found: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1])
            continue
        pending.append(stripped)
        keyword, _, arguments = " ".join(pending).partition(" ")
        found.append(Instruction(keyword.upper(), arguments.strip(), start))
        pending = []
    assert not pending, "containerfile ends inside a continued instruction"
    return found


def parsed() -> list[Instruction]:
    return instructions(CONTAINERFILE.read_text())


def project_scripts() -> dict[str, str]:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    return pyproject["project"]["scripts"]


def test_hadolint_passes(hadolint: Path) -> None:
    result = subprocess.run([str(hadolint), "--no-color", str(CONTAINERFILE)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_would_flag_a_bad_instruction(hadolint: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.containerfile"
    bad.write_text(CONTAINERFILE.read_text() + "\nRUN cd /tmp && apt-get install -y curl\n")
    result = subprocess.run([str(hadolint), "--no-color", str(bad)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "DL3003" in result.stdout


def test_every_hadolint_ignore_is_justified() -> None:
    lines = CONTAINERFILE.read_text().splitlines()
    for index, line in enumerate(lines):
        match = re.match(r"\s*#\s*hadolint\s+ignore=(\S+)", line)
        if not match:
            continue
        justification = []
        for previous in reversed(lines[:index]):
            if not previous.strip().startswith("#"):
                break
            justification.append(previous)
        for rule in match.group(1).split(","):
            assert any(rule in comment for comment in justification), (
                f"line {index + 1}: ignore of {rule} has no comment above saying why")


def test_every_copy_source_exists() -> None:
    copies = [i for i in parsed() if i.keyword in ("COPY", "ADD")]
    assert copies
    for instruction in copies:
        arguments = instruction.arguments
        if arguments.startswith("["):
            words = json.loads(arguments)
        else:
            words = shlex.split(arguments)
        flags = [word for word in words if word.startswith("--")]
        paths = [word for word in words if not word.startswith("--")]
        if any(flag.startswith("--from=") for flag in flags):
            continue
        assert instruction.keyword == "COPY", f"line {instruction.line}: use COPY, not ADD"
        *sources, _destination = paths
        assert sources, f"line {instruction.line}: COPY without a source"
        for source in sources:
            assert list(REPO.glob(source.rstrip("/"))), (
                f"line {instruction.line}: COPY source {source} does not exist in the repository")


def test_versions_are_pinned_build_arguments() -> None:
    defaults = {}
    for instruction in parsed():
        if instruction.keyword == "ARG" and "=" in instruction.arguments:
            name, _, value = instruction.arguments.partition("=")
            defaults[name] = value.strip('"')
    for name in PINNED_ARGS:
        assert defaults.get(name), f"ARG {name} needs a pinned default"
        assert "latest" not in defaults[name]
    assert re.fullmatch(r"nvcr\.io/nvidia/tritonserver:\d\d\.\d\d-trtllm-python-py3",
                        defaults["BASE_IMAGE"])
    text = CONTAINERFILE.read_text()
    for name in PINNED_ARGS[1:]:
        assert f"${{{name}}}" in text, f"ARG {name} is never used"


def test_amazon_open_mpi_comes_first_on_path() -> None:
    env = " ".join(i.arguments for i in parsed() if i.keyword == "ENV")
    path = re.search(r"\bPATH=(\S+)", env)
    assert path, "no ENV PATH"
    entries = path.group(1).split(":")
    assert "/opt/amazon/openmpi/bin" in entries
    assert entries.index("/opt/amazon/openmpi/bin") < entries.index("${PATH}")


def test_project_is_installed_plain_from_a_wheel_built_in_the_image() -> None:
    runs = [i.arguments for i in parsed() if i.keyword == "RUN"]
    assert any("pip wheel" in run and "--no-deps" in run for run in runs)
    installs = [run for run in runs if "pip install" in run and ".whl" in run]
    assert len(installs) == 1  # (the CPU variant's other pip install is nvidia-pytriton's)
    assert "[image]" not in installs[0] and "tensorrt" not in installs[0]


def test_no_kubectl_in_the_image() -> None:
    for instruction in parsed():
        assert "kubectl" not in instruction.arguments, f"line {instruction.line} uses kubectl"


def test_entrypoint_is_the_projects_console_script() -> None:
    entrypoints = [i for i in parsed() if i.keyword == "ENTRYPOINT"]
    assert len(entrypoints) == 1
    entrypoint = json.loads(entrypoints[0].arguments)
    scripts = project_scripts()
    assert entrypoint[0] in scripts, f"{entrypoint[0]} is not in [project.scripts]"
    assert "kubessh" in scripts, "kubessh must be a console script to be on the image's PATH"
    module, _, attribute = scripts[entrypoint[0]].partition(":")
    target = getattr(importlib.import_module(module), attribute)
    assert callable(target)


def test_chart_command_is_the_image_entrypoint(helm: Helm) -> None:
    entrypoint = json.loads(next(i for i in parsed() if i.keyword == "ENTRYPOINT").arguments)
    lws = one(helm.template(), "LeaderWorkerSet")
    for template in pod_templates(lws).values():
        assert container(template)["command"] == entrypoint
