"""triton_trt-llm.containerfile: lint clean, every COPY source exists, the
entrypoint is this project's console script, and it is the chart's command.
Security: the default base has the python backend CVE fixes, every download
is checked against a sha256 before use, git sources are pinned by commit, and
the final stage runs as a numeric non-root user that writes only to /tmp and
/dev/shm. Each of these checks is also run against a broken copy of the file,
to show that it fails there."""

from __future__ import annotations

import importlib
import json
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from chart_helpers import REPO, Helm, container, one, pod_templates

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

CONTAINERFILE = REPO / "triton_trt-llm.containerfile"
PINNED_ARGS = ("BASE_IMAGE", "EFA_INSTALLER_VERSION", "AWS_OFI_NCCL_VERSION", "NCCL_VERSION",
               "AWS_OFI_NCCL_COMMIT", "NCCL_COMMIT")
# The first Triton release with the fixes for CVE-2025-23319, CVE-2025-23320 and
# CVE-2025-23334 (the python backend's shared memory, ending in remote code execution).
FIXED_RELEASE = (25, 7)
SHA256 = re.compile(r"[0-9a-f]{64}")
COMMIT = re.compile(r"[0-9a-f]{40}")
# curl or wget as a command of a pipeline (not, say, a package name in an apt-get install)
DOWNLOAD = re.compile(r"(?:.*\|\s*)?(curl|wget)\s")


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


def stages(found: list[Instruction]) -> list[list[Instruction]]:
    """The instructions of each stage, its FROM first; ARGs before the first FROM are left out."""
    result: list[list[Instruction]] = []
    for instruction in found:
        if instruction.keyword == "FROM":
            result.append([])
        if result:
            result[-1].append(instruction)
    return result


def arg_defaults(found: list[Instruction]) -> dict[str, str | None]:
    """ARG name -> default (None: declared without one)."""
    defaults: dict[str, str | None] = {}
    for instruction in found:
        if instruction.keyword == "ARG":
            name, equals, value = instruction.arguments.partition("=")
            defaults[name.strip()] = value.strip('"') if equals else None
    return defaults


def pipelines(script: str) -> list[str]:
    """A RUN's shell script cut at &&, || and ; (pipes stay inside one piece)."""
    return [piece.strip() for piece in re.split(r"&&|\|\||;", script) if piece.strip()]


def references(text: str, suffix: str) -> set[str]:
    """Names of the variables ending in ``suffix`` that ``text`` expands."""
    return set(re.findall(r"\$\{?(\w+" + suffix + r")\b", text))


def mutated(old: str, new: str) -> str:
    """The containerfile with ``old`` (which must occur) replaced by ``new``."""
    text = CONTAINERFILE.read_text()
    assert old in text, f"the mutation's target is gone from the containerfile: {old!r}"
    return text.replace(old, new)


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


# --- security ----------------------------------------------------------------

def base_release_problems(text: str) -> list[str]:
    base = arg_defaults(instructions(text)).get("BASE_IMAGE") or ""
    match = re.fullmatch(r"nvcr\.io/nvidia/tritonserver:(\d\d)\.(\d\d)-trtllm-python-py3", base)
    if not match:
        return [f"BASE_IMAGE default {base!r} is not a tritonserver YY.MM-trtllm-python-py3 tag"]
    release = (int(match.group(1)), int(match.group(2)))
    if release < FIXED_RELEASE:
        return [f"BASE_IMAGE default {base}: Triton releases before 25.07 carry CVE-2025-23319/23320/23334"]
    return []


def download_problems(text: str) -> list[str]:
    """Every file fetched with curl or wget is saved, then checked with ``sha256sum -c`` against a
    *_SHA256 build argument of its stage, before anything else touches it; nothing is piped from the
    network into another command, and ADD fetches nothing."""
    problems = []
    for stage in stages(instructions(text)):
        args = arg_defaults(stage)
        for instruction in stage:
            where = f"line {instruction.line}"
            if instruction.keyword == "ADD" and re.search(r"\w+://", instruction.arguments):
                problems.append(f"{where}: ADD fetches a URL, unchecked")
            if instruction.keyword != "RUN":
                continue
            steps = pipelines(instruction.arguments)
            for index, step in enumerate(steps):
                tool = DOWNLOAD.match(step)
                if not tool:
                    continue
                if "|" in step:
                    problems.append(f"{where}: {tool.group(1)} is piped into a command before any checksum")
                    continue
                output = re.search(r"(?:\s-[a-zA-Z]*[oO]|\s--output(?:-document)?)[\s=]+(\S+)", step)
                if not output:
                    problems.append(f"{where}: {tool.group(1)} does not save what it fetches to a file")
                    continue
                archive = output.group(1).strip("'\"")
                later = steps[index + 1:]
                checks = [i for i, s in enumerate(later)
                          if re.search(r"\bsha256sum\s+(?:-c|--check)\b", s) and archive in s]
                if not checks:
                    problems.append(f"{where}: {archive} is never checked with sha256sum -c")
                    continue
                check = later[checks[0]]
                names = references(check, "_SHA256")
                if not names or not names <= args.keys():
                    problems.append(f"{where}: the checksum of {archive} is not a *_SHA256 ARG of its stage")
                used_first = [s for s in later[:checks[0]] if archive in s]
                if used_first:
                    problems.append(f"{where}: {archive} is used before its checksum is checked: {used_first[0]}")
    return problems


def git_problems(text: str) -> list[str]:
    """Every git clone or fetch names a *_COMMIT build argument whose default is a full commit
    hash, and proves right after it (before anything else runs) that HEAD is that commit."""
    problems = []
    for stage in stages(instructions(text)):
        args = arg_defaults(stage)
        for instruction in stage:
            if instruction.keyword != "RUN" or not re.search(r"\bgit\s+(clone|fetch)\b", instruction.arguments):
                continue
            where = f"line {instruction.line}"
            names = references(instruction.arguments, "_COMMIT")
            if not names:
                problems.append(f"{where}: a git source without a *_COMMIT build argument")
            for name in sorted(names):
                default = args.get(name)
                if default is None or not COMMIT.fullmatch(default):
                    problems.append(f"{where}: ARG {name} must default to a 40-hex commit, not {default!r}")
            steps = pipelines(instruction.arguments)
            last_git = max(i for i, s in enumerate(steps) if re.search(r"\bgit\s+(clone|fetch)\b", s))
            following = steps[last_git + 1] if last_git + 1 < len(steps) else ""
            verified = ("git rev-parse HEAD" in following and references(following, "_COMMIT")
                        and references(following, "_COMMIT") == names)
            if not verified:
                problems.append(f"{where}: HEAD is not compared with the pinned commit right after the fetch")
            elif "exit 1" not in instruction.arguments:
                problems.append(f"{where}: a commit mismatch does not fail the build")
    return problems


def checksum_arg_problems(text: str) -> list[str]:
    """A *_SHA256 ARG has a sha256 default, or else the first RUN of its stage that names it (before
    any download) stops the build unless a sha256 is given, saying which --build-arg to pass; and
    only the GPU stage, which the CPU variant never builds, may require one. The guard is run here
    with bash, as the build would run it."""
    problems = []
    for stage in stages(instructions(text)):
        args = arg_defaults(stage)
        for name, default in args.items():
            if not name.endswith("_SHA256"):
                continue
            if default is not None:
                if not SHA256.fullmatch(default):
                    problems.append(f"ARG {name}={default}: not a sha256")
                continue
            if not stage[0].arguments.endswith(" AS gpu-base"):
                problems.append(f"ARG {name} is required outside the GPU stage: {stage[0].arguments}")
            guard = next((i for i in stage if i.keyword == "RUN" and name in i.arguments), None)
            if guard is None or any(DOWNLOAD.match(step) for step in pipelines(guard.arguments)):
                problems.append(f"ARG {name} has no default and nothing checks it before the download")
                continue
            env = {"PATH": "/usr/bin:/bin", **{key: value or "" for key, value in args.items()}}
            for value, passes in (("", False), ("not-a-hash", False), ("ABC" * 21 + "D", False), ("0" * 64, True)):
                result = subprocess.run(["bash", "-o", "pipefail", "-c", guard.arguments],
                                        env={**env, name: value}, capture_output=True, text=True, timeout=30)
                if (result.returncode == 0) != passes:
                    problems.append(f"line {guard.line}: {name}={value!r} "
                                    f"{'fails' if passes else 'passes'} the check (exit {result.returncode})")
                elif not passes and f"--build-arg {name}=" not in result.stderr:
                    problems.append(f"line {guard.line}: without {name} the build does not say to pass "
                                    f"--build-arg {name}=: {result.stderr.strip()!r}")
    return problems


def final_user_problems(text: str) -> list[str]:
    """The final stage's last USER is numeric uid[:gid] and neither is 0."""
    final = stages(instructions(text))[-1]
    users = [i for i in final if i.keyword == "USER"]
    if not users:
        return ["the final stage sets no USER: it runs as root"]
    user = users[-1].arguments
    match = re.fullmatch(r"(\d+)(?::(\d+))?", user)
    if not match:
        return [f"USER {user}: not numeric, so Kubernetes cannot check runAsNonRoot against it"]
    if int(match.group(1)) == 0 or (match.group(2) is not None and int(match.group(2)) == 0):
        return [f"USER {user}: root"]
    return []


def runtime_env_problems(text: str) -> list[str]:
    """The final stage points HOME and TMPDIR at /tmp (a writable volume under a read-only root
    filesystem) and keeps Python from writing __pycache__ beside its sources."""
    env: dict[str, str] = {}
    for instruction in stages(instructions(text))[-1]:
        if instruction.keyword == "ENV":
            env.update(word.split("=", 1) for word in shlex.split(instruction.arguments) if "=" in word)
    problems = []
    if not env.get("HOME", "").startswith("/tmp"):
        problems.append(f"HOME={env.get('HOME')}: not under /tmp")
    if env.get("TMPDIR") != "/tmp":
        problems.append(f"TMPDIR={env.get('TMPDIR')}: not /tmp")
    if env.get("PYTHONDONTWRITEBYTECODE") != "1":
        problems.append("PYTHONDONTWRITEBYTECODE is not 1")
    return problems


CHECKS = {
    "base": base_release_problems,
    "downloads": download_problems,
    "checksum args": checksum_arg_problems,
    "git": git_problems,
    "user": final_user_problems,
    "env": runtime_env_problems,
}


@pytest.mark.parametrize("check", CHECKS)
def test_security_property_holds(check: str) -> None:
    assert CHECKS[check](CONTAINERFILE.read_text()) == []


EFA_CURL = """ && curl -fsSL -o efa-installer.tar.gz \\
        "https://efa-installer.amazonaws.com/aws-efa-installer-${EFA_INSTALLER_VERSION}.tar.gz" \\
"""
EFA_CHECK = """ && echo "${EFA_INSTALLER_SHA256}  efa-installer.tar.gz" | sha256sum -c - \\
"""
EFA_TAR = """ && tar -xzf efa-installer.tar.gz --strip-components=1 \\
"""
EFA_GUARD = """RUN [[ "${EFA_INSTALLER_SHA256}" =~ ^[0-9a-f]{64}$ ]] \\
 || { echo "EFA_INSTALLER_SHA256 must be the sha256 (64 lowercase hex digits) that AWS publishes for" \\
           "aws-efa-installer-${EFA_INSTALLER_VERSION}.tar.gz; pass it with" \\
           "--build-arg EFA_INSTALLER_SHA256=<sha256>" >&2; exit 1; }
"""
NCCL_VERIFY = """ && { [ "$(git rev-parse HEAD)" = "${NCCL_COMMIT}" ] \\
"""
BREAKAGES = {
    "base 24.07": ("base", "tritonserver:25.07-", "tritonserver:24.07-"),
    "base not a release tag": ("base", "tritonserver:25.07-trtllm-python-py3", "tritonserver:latest"),
    "curl piped into tar": ("downloads", EFA_CURL + EFA_CHECK + EFA_TAR,
                            ' && curl -fsSL "https://efa-installer.amazonaws.com/x.tar.gz" | tar -xz \\\n'),
    "no checksum": ("downloads", EFA_CHECK, ""),
    "unpacked before the check": ("downloads", EFA_CHECK + EFA_TAR, EFA_TAR + EFA_CHECK),
    "checksum not an ARG": ("downloads", '"${EFA_INSTALLER_SHA256}  efa', '"0000  efa'),
    "another unchecked download": ("downloads", "WORKDIR /tmp/nccl\n",
                                   "RUN wget -q -O x.tgz https://example.com/x.tgz && tar -xzf x.tgz\n"
                                   "WORKDIR /tmp/nccl\n"),
    "ADD of a URL": ("downloads", "WORKDIR /tmp/nccl\n", "ADD https://example.com/x.tgz /tmp/\nWORKDIR /tmp/nccl\n"),
    "checksum default not a sha256": ("checksum args", "ARG EFA_INSTALLER_SHA256\n",
                                      "ARG EFA_INSTALLER_SHA256=see-the-release-notes\n"),
    "no guard": ("checksum args", EFA_GUARD, ""),
    "guard lets anything pass": ("checksum args", "=~ ^[0-9a-f]{64}$ ]]", "=~ ^.*$ ]]"),
    "guard says nothing useful": ("checksum args", '"--build-arg EFA_INSTALLER_SHA256=<sha256>"', '"failed"'),
    "required in the CPU stage": ("checksum args", "ARG PYTRITON_VERSION=0.7.0\n",
                                  "ARG PYTRITON_VERSION=0.7.0\nARG WHEEL_SHA256\n"),
    "commit not verified": ("git", NCCL_VERIFY, " && { true \\\n"),
    "commit a tag": ("git", "ARG NCCL_COMMIT=ab2b89c4c339bd7f816fbc114a4b05d386b66290",
                     "ARG NCCL_COMMIT=v2.21.5-1"),
    "commit abbreviated": ("git", "ARG NCCL_COMMIT=ab2b89c4c339bd7f816fbc114a4b05d386b66290",
                           "ARG NCCL_COMMIT=ab2b89c"),
    "commit without default": ("git", "ARG NCCL_COMMIT=ab2b89c4c339bd7f816fbc114a4b05d386b66290",
                               "ARG NCCL_COMMIT"),
    "unpinned clone": ("git", "WORKDIR /tmp/nccl\n",
                       "RUN git clone --depth 1 https://github.com/example/x.git /tmp/x\nWORKDIR /tmp/nccl\n"),
    "no USER": ("user", "USER 1000:1000\n", ""),
    "USER by name": ("user", "USER 1000:1000\n", "USER triton\n"),
    "USER root": ("user", "USER 1000:1000\n", "USER 0:0\n"),
    "root group": ("user", "USER 1000:1000\n", "USER 1000:0\n"),
    "root again at the end": ("user", 'CMD ["--help"]', 'CMD ["--help"]\nUSER root'),
    "HOME on the root filesystem": ("env", "ENV HOME=/tmp", "ENV HOME=/home/triton"),
    "no TMPDIR": ("env", "TMPDIR=/tmp \\\n", ""),
    "bytecode written": ("env", "PYTHONDONTWRITEBYTECODE=1", "PYTHONDONTWRITEBYTECODE=0"),
}


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_security_check_fails_on_a_broken_containerfile(breakage: str) -> None:
    check, old, new = BREAKAGES[breakage]
    assert CHECKS[check](mutated(old, new)), f"the {check} check passes a containerfile with {breakage}"
