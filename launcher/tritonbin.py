"""Find a tritonserver binary and, for the PyPI build, its python backend.

Production images put ``tritonserver`` on PATH with backends under
/opt/tritonserver/backends. For local runs and tests the binary comes from the
``nvidia-pytriton`` wheel, whose python backend needs the stub matching this
interpreter; that backend is assembled once in a cache directory (links to
the wheel's files plus the stub), never by writing into site-packages.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import sys
from pathlib import Path

from .errors import MissingExecutableError
from .plan import TritonCommand


def _pytriton_root() -> Path | None:
    spec = importlib.util.find_spec("pytriton")  # locate without importing: it is slow
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(list(spec.submodule_search_locations)[0]) / "tritonserver"
    return root if (root / "bin" / "tritonserver").is_file() else None


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lws-triton-launcher"


def _python_stub(pytriton_root: Path) -> Path:
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = pytriton_root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise MissingExecutableError(
            f"{stub}: nvidia-pytriton has no python backend stub for Python {version}; "
            "use Python 3.10-3.13 or pass --tritonserver with a full Triton install"
        )
    return stub


def link_python_backend(pytriton_root: Path, backends: Path) -> None:
    """``backends/python``: links to the wheel's python backend plus this interpreter's stub."""
    stub = _python_stub(pytriton_root)
    python_dir = backends / "python"
    target = python_dir / "triton_python_backend_stub"
    if target.exists():
        return
    python_dir.mkdir(parents=True, exist_ok=True)
    for item in (pytriton_root / "backends" / "python").iterdir():
        link = python_dir / item.name
        if item.name != "__pycache__" and not link.exists():
            link.symlink_to(item)
    # A link, not a copy: the stub finds its bundled libraries relative
    # to its real location.
    partial = target.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    partial.symlink_to(stub)
    partial.replace(target)


def assemble_python_backend(pytriton_root: Path, cache: Path) -> Path:
    """A backend directory whose python backend has this interpreter's stub."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    key = hashlib.sha256(str(pytriton_root).encode()).hexdigest()[:12]
    backends = cache / f"backends-{key}-py{version}"
    link_python_backend(pytriton_root, backends)
    return backends


def install_layout(target: Path) -> str:
    """Lay the pytriton build out as Triton's own images do: ``target/bin/tritonserver`` and
    ``target/backends``, its default backend directory, so that every pod of a group finds the same
    files at the same paths (a cache directory assembled by the leader exists in the leader's pod
    only). Nothing to do where ``target`` already holds a tritonserver. Returns what was done."""
    binary = target / "bin" / "tritonserver"
    if binary.exists():
        return f"{binary} exists; nothing to do"
    root = _pytriton_root()
    if root is None:
        raise MissingExecutableError(f"{binary} does not exist and nvidia-pytriton is not installed")
    link_python_backend(root, target / "backends")
    binary.parent.mkdir(parents=True, exist_ok=True)
    binary.symlink_to(root / "bin" / "tritonserver")
    return f"{binary} -> {root / 'bin' / 'tritonserver'}, python backend in {target / 'backends'}"


def find_tritonserver(requested: str = "tritonserver") -> TritonCommand:
    """Resolve ``requested`` (a path or a name on PATH), else the pytriton build."""
    found = shutil.which(requested)
    if found:
        return TritonCommand(binary=found)
    if requested == "tritonserver":
        for candidate in ("/opt/tritonserver/bin/tritonserver",):
            if os.access(candidate, os.X_OK):
                return TritonCommand(binary=candidate)
        root = _pytriton_root()
        if root is not None:
            return TritonCommand(
                binary=str(root / "bin" / "tritonserver"),
                backend_directory=str(assemble_python_backend(root, _cache_dir())),
            )
    raise MissingExecutableError(
        f"--tritonserver={requested}: no such executable; install Triton (or pip install "
        "'lws-triton-launcher[local]' for the CPU build) or pass the binary's path"
    )


if __name__ == "__main__":  # python -m launcher.tritonbin <dir>: used by the CPU image's build
    print(install_layout(Path(sys.argv[1])))
