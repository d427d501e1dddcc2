"""Checks on the Triton model repository and the TensorRT-LLM engine in it.

They run on the leader before mpirun starts, so a wrong path or an engine
built for another parallelism fails in a second with a clear message instead
of minutes later inside every rank.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from .config import LaunchConfig
from .errors import EngineMismatchError, ModelRepositoryError

# Parameter names under which TensorRT-LLM's config.pbtxt names the engine.
ENGINE_DIR_KEYS = ("engine_dir", "gpt_model_path")
_PARAMETER = re.compile(
    r'key:\s*"(?P<key>[^"]+)"\s*value:\s*\{\s*string_value:\s*"(?P<value>[^"]*)"\s*\}', re.S
)


def check_model_repository(config: LaunchConfig) -> None:
    repo = config.model_repo
    if not repo.exists():
        raise ModelRepositoryError(
            f"--model-repo={repo}: the model repository does not exist; "
            "mount it there or point --model-repo (LAUNCHER_MODEL_REPO) at it"
        )
    if not repo.is_dir():
        raise ModelRepositoryError(f"--model-repo={repo}: not a directory; point it at the model repository")
    model_dir = repo / config.model
    if not model_dir.is_dir():
        present = sorted(p.name for p in repo.iterdir() if p.is_dir())
        raise ModelRepositoryError(
            f"--model={config.model}: no such model in {repo} (found: {', '.join(present) or 'nothing'}); "
            "pass --model with one of them or fill the repository"
        )
    if not (model_dir / "config.pbtxt").is_file():
        raise ModelRepositoryError(
            f"{model_dir / 'config.pbtxt'}: missing; every model needs a config.pbtxt "
            "(the launcher disables Triton's auto-complete)"
        )


def read_parameters(config_pbtxt: Path) -> dict[str, str]:
    """The string parameters of a Triton model configuration."""
    return {m["key"]: m["value"] for m in _PARAMETER.finditer(config_pbtxt.read_text())}


def engine_parallelism(engine_config: dict[str, Any]) -> tuple[int, int]:
    """(tp, pp) from a TensorRT-LLM engine config.json, old or new layout."""
    mapping = engine_config.get("pretrained_config", {}).get("mapping")
    if mapping:
        return int(mapping.get("tp_size", 1)), int(mapping.get("pp_size", 1))
    builder = engine_config.get("builder_config", {})
    if "tensor_parallel" in builder:
        return int(builder["tensor_parallel"]), int(builder.get("pipeline_parallel", 1))
    raise KeyError("no pretrained_config.mapping or builder_config.tensor_parallel")


def check_engine(config: LaunchConfig) -> tuple[int, int] | None:
    """Compare the engine's tp/pp with the launch; None when there is no engine to check."""
    pbtxt = config.model_repo / config.model / "config.pbtxt"
    if not pbtxt.is_file():
        return None
    params = read_parameters(pbtxt)
    engine_dir = next((params[k] for k in ENGINE_DIR_KEYS if k in params), None)
    if engine_dir is None:
        return None
    if "${" in engine_dir:
        raise ModelRepositoryError(
            f"{pbtxt}: engine directory {engine_dir!r} is an unfilled template; "
            "fill the model repository templates (fill_template.py) before launching"
        )
    engine_json = Path(engine_dir) / "config.json"
    if not engine_json.is_file():
        raise ModelRepositoryError(
            f"{engine_json}: the engine named in {pbtxt} has no config.json; "
            "build the engine there or fix the engine directory parameter"
        )
    try:
        tp, pp = engine_parallelism(json.loads(engine_json.read_text()))
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelRepositoryError(
            f"{engine_json}: not a TensorRT-LLM engine config ({exc}); rebuild the engine") from None
    if (tp, pp) != (config.tp, config.pp):
        raise EngineMismatchError(
            f"{engine_json}: the engine was built for tp={tp} pp={pp} (world {tp * pp}) but the launch "
            f"asks tp={config.tp} pp={config.pp} (world {config.world_size}); "
            "launch with the engine's --tp/--pp or rebuild the engine"
        )
    return tp, pp
