"""Checks on the Triton model repository and the TensorRT-LLM engine in it.

They run on the leader before mpirun starts, so a wrong path, a template left
unfilled or an engine built for another parallelism fails in a second with a
clear message instead of minutes later inside every rank. Rank 0 loads every
model of the repository, so every ``<model>/config.pbtxt`` is read (once,
with a regex reader of the protobuf text format; comments are dropped first).

Unfilled templates (``${name}``, what TensorRT-LLM's ``fill_template.py``
leaves behind): in a field (``backend: "${triton_backend}"``,
``max_batch_size: ${triton_max_batch_size}``) Triton cannot load the model, so
the launch is refused. In a parameter's string value TensorRT-LLM's models
read the template as "not set" and use their default (its templates carry
dozens of optional parameters that deployments leave unfilled), so only the
parameters without a default are refused: the engine directory
(``gpt_model_path``; ``engine_dir`` of --model in ``check_engine``) and
``tokenizer_dir`` (except where it serves guided decoding only).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any

from .config import LaunchConfig
from .errors import EngineMismatchError, ModelRepositoryError

# Parameter names under which TensorRT-LLM's config.pbtxt names the engine.
ENGINE_DIR_KEYS = ("engine_dir", "gpt_model_path")
TOKENIZER_DIR_KEY = "tokenizer_dir"
# A parameter of --model naming each rank's weights file ({rank}: the rank), for models other than
# TensorRT-LLM's (the toy model): what the startup progress sizes the load by.
RANK_WEIGHTS_KEY = "rank_weights"
# Parameters TensorRT-LLM has no default for: a template left in one is refused (the others mean "not set").
REQUIRED_PARAMETERS = ("gpt_model_path", TOKENIZER_DIR_KEY)
# Where a tokenizer_dir serves only guided decoding (the tensorrt_llm model), which is off unless set.
GUIDED_DECODING_KEY = "guided_decoding_backend"
# What to fill a template with, where one value is right; otherwise the fix says <value>.
FILL_HINTS = {"triton_backend": "tensorrtllm", "tokenizer_dir": "<tokenizer directory>",
              "engine_dir": "<engine directory>"}

_PARAMETER = re.compile(
    r'key\s*:\s*"(?P<key>[^"]+)"\s*value\s*:?\s*\{\s*string_value\s*:\s*"(?P<value>[^"]*)"\s*\}', re.S
)
_COMMENT = re.compile(r"#[^\n]*")
# Strings are matched so that a "#" inside one does not start a comment.
_STRING_OR_COMMENT = re.compile(r'"(?:[^"\\\n]|\\.)*"|\'(?:[^\'\\\n]|\\.)*\'|#[^\n]*')
_TEMPLATE = re.compile(r"\$\{(?P<name>[^}\"'\n]*)\}")
_FIELD = re.compile(r"(\w+)\s*:")
_PLATFORM = re.compile(r'platform\s*:\s*"(?P<platform>[^"]*)"')
_STEP_MODEL = re.compile(r'model_name\s*:\s*"(?P<name>[^"]*)"')


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """One model's config.pbtxt: its text without comments and its string parameters."""

    path: Path
    text: str
    parameters: dict[str, str]

    @property
    def is_ensemble(self) -> bool:
        match = _PLATFORM.search(self.text)
        return match is not None and match["platform"] == "ensemble"


def strip_comments(text: str) -> str:
    """The text without its comments ("#" to the end of the line, outside strings)."""

    def drop(comment: re.Match[str]) -> str:
        head = text[text.rfind("\n", 0, comment.start()) + 1 : comment.start()]
        if '"' not in head and "'" not in head:
            return ""
        # A quote before the "#": strings in view, this line only (the head holds no "#", so it stays as is).
        return _STRING_OR_COMMENT.sub(_keep_strings, head + comment[0])[len(head) :]

    return _COMMENT.sub(drop, text)


def _keep_strings(match: re.Match[str]) -> str:
    return "" if match[0].startswith("#") else match[0]


def read_model_config(config_pbtxt: Path) -> ModelConfig:
    text = strip_comments(config_pbtxt.read_text())
    return ModelConfig(config_pbtxt, text, {m["key"]: m["value"] for m in _PARAMETER.finditer(text)})


def read_parameters(config_pbtxt: Path) -> dict[str, str]:
    """The string parameters of a Triton model configuration."""
    return read_model_config(config_pbtxt).parameters


def check_model_repository(config: LaunchConfig) -> None:
    """The repository and --model exist, and every model's config.pbtxt is filled in and consistent."""
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
    check_repository_models(repo)


def repository_models(repo: Path) -> dict[str, ModelConfig]:
    """Every model of the repository (a directory with a config.pbtxt), by name."""
    models = {}
    with os.scandir(repo) as entries:
        for entry in entries:
            pbtxt = Path(entry.path) / "config.pbtxt"
            if entry.is_dir() and pbtxt.is_file():
                models[entry.name] = read_model_config(pbtxt)
    return dict(sorted(models.items()))


def check_repository_models(repo: Path) -> None:
    """What rank 0 would refuse to load: unfilled templates, tokenizers that are not there, ensemble steps."""
    models = repository_models(repo)
    for model in models.values():
        check_templates(model)
        check_tokenizer_dir(model)
        if model.is_ensemble:
            check_ensemble_steps(model, models)


def unfilled_templates(model: ModelConfig) -> list[tuple[str, str]]:
    """(key, template name) of every template Triton or TensorRT-LLM cannot run with, in file order."""
    found: list[tuple[int, str, str]] = []
    for param in _PARAMETER.finditer(model.text):
        template = _TEMPLATE.search(param["value"])
        if template and is_required(param["key"], model):
            found.append((param.start(), f"parameter {param['key']}", template["name"]))
    fields = _PARAMETER.sub(lambda m: " " * len(m[0]), model.text)  # parameters blanked, offsets kept
    for template in _TEMPLATE.finditer(fields):
        keys = _FIELD.findall(fields, max(0, template.start() - 200), template.start())
        found.append((template.start(), keys[-1] if keys else "?", template["name"]))
    return [(key, name) for _, key, name in sorted(found)]


def is_required(parameter: str, model: ModelConfig) -> bool:
    if parameter == TOKENIZER_DIR_KEY and GUIDED_DECODING_KEY in model.parameters:
        return False  # the tensorrt_llm model's tokenizer, read only for guided decoding
    return parameter in REQUIRED_PARAMETERS


def check_templates(model: ModelConfig) -> None:
    found = unfilled_templates(model)
    if not found:
        return
    key, name = found[0]
    more = f" (and {len(found) - 1} more: {', '.join(k for k, _ in found[1:])})" if len(found) > 1 else ""
    names = dict.fromkeys(n for _, n in found)
    fill = ",".join(f"{n}:{FILL_HINTS.get(n, '<value>')}" for n in names)
    raise ModelRepositoryError(
        f"{model.path}: {key} is the unfilled template ${{{name}}}{more}; "
        f"fill it before launching: python3 fill_template.py -i {model.path} {fill}"
    )


def check_tokenizer_dir(model: ModelConfig) -> None:
    path = model.parameters.get(TOKENIZER_DIR_KEY)
    if path is None or "${" in path:  # an unfilled one that matters is refused by check_templates
        return
    if not path and not is_required(TOKENIZER_DIR_KEY, model):
        return  # empty: "not set" where it serves guided decoding only
    if not path or not Path(path).is_dir():
        what = "does not exist" if not path or not Path(path).exists() else "is not a directory"
        raise ModelRepositoryError(
            f"{model.path}: parameter {TOKENIZER_DIR_KEY} names {path!r}, which {what}; "
            f"mount the tokenizer there or set {TOKENIZER_DIR_KEY} to the tokenizer's directory"
        )


def check_ensemble_steps(model: ModelConfig, models: dict[str, ModelConfig]) -> None:
    for step in _STEP_MODEL.finditer(model.text):
        if step["name"] not in models:
            raise ModelRepositoryError(
                f"{model.path}: ensemble step model_name {step['name']!r} is no model of the repository "
                f"(found: {', '.join(models)}); fix the step's model_name or add that model "
                "(a directory with a config.pbtxt)"
            )


def engine_parallelism(engine_config: dict[str, Any]) -> tuple[int, int]:
    """(tp, pp) from a TensorRT-LLM engine config.json, old or new layout."""
    mapping = engine_config.get("pretrained_config", {}).get("mapping")
    if mapping:
        return int(mapping.get("tp_size", 1)), int(mapping.get("pp_size", 1))
    builder = engine_config.get("builder_config", {})
    if "tensor_parallel" in builder:
        return int(builder["tensor_parallel"]), int(builder.get("pipeline_parallel", 1))
    raise KeyError("no pretrained_config.mapping or builder_config.tensor_parallel")


def model_parameters(config: LaunchConfig) -> tuple[Path, dict[str, str]] | None:
    """--model's config.pbtxt and its string parameters; None without one."""
    pbtxt = config.model_repo / config.model / "config.pbtxt"
    return (pbtxt, read_parameters(pbtxt)) if pbtxt.is_file() else None


def engine_parameter(config: LaunchConfig) -> tuple[Path, str, str] | None:
    """(--model's config.pbtxt, the parameter naming its TensorRT-LLM engine, its value); None without one."""
    found = model_parameters(config)
    if found is None:
        return None
    pbtxt, params = found
    key = next((k for k in ENGINE_DIR_KEYS if k in params), None)
    return None if key is None else (pbtxt, key, params[key])


def rank_load_files(config: LaunchConfig) -> list[Path] | None:
    """The file each rank of --model reads while it loads, in rank order: TensorRT-LLM's rank engines, or
    the files a ``rank_weights`` parameter names (``{rank}``: the rank; relative to the model's directory
    unless absolute). None where the repository does not say, or cannot be read."""
    try:
        engine = engine_parameter(config)
        if engine is not None:
            return None if "${" in engine[2] else rank_engine_files(Path(engine[2]))
        found = model_parameters(config)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    pattern = found[1].get(RANK_WEIGHTS_KEY) if found else None
    if not pattern:
        return None
    model_dir = config.model_repo / config.model
    return [model_dir / pattern.replace("{rank}", str(rank)) for rank in range(config.world_size)]


def rank_engine_files(engine_dir: Path) -> list[Path] | None:
    """Every rank's engine file of the engine in ``engine_dir``, from its config.json; None where unknown."""
    engine_config = json.loads((engine_dir / "config.json").read_text())
    names = rank_engine_names(engine_config, *engine_parallelism(engine_config))
    return None if names is None else [engine_dir / name for name in names]


def check_engine(config: LaunchConfig) -> tuple[int, int] | None:
    """Compare the engine's tp/pp with the launch, then look for every rank's engine file.

    None when there is no engine to check."""
    found = engine_parameter(config)
    if found is None:
        return None
    pbtxt, key, engine_dir = found
    if "${" in engine_dir:
        raise ModelRepositoryError(
            f"{pbtxt}: parameter {key} is the unfilled template {engine_dir}; fill it before launching: "
            f"python3 fill_template.py -i {pbtxt} engine_dir:<engine directory>"
        )
    engine_json = Path(engine_dir) / "config.json"
    if not engine_json.is_file():
        raise ModelRepositoryError(
            f"{engine_json}: the engine named in {pbtxt} has no config.json; "
            f"build the engine there or fix {key}"
        )
    try:
        engine_config = json.loads(engine_json.read_text())
        tp, pp = engine_parallelism(engine_config)
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelRepositoryError(
            f"{engine_json}: not a TensorRT-LLM engine config ({exc}); rebuild the engine") from None
    if (tp, pp) != (config.tp, config.pp):
        raise EngineMismatchError(
            f"{engine_json}: the engine was built for tp={tp} pp={pp} (world {tp * pp}) but the launch "
            f"asks tp={config.tp} pp={config.pp} (world {config.world_size}); "
            "launch with the engine's --tp/--pp or rebuild the engine"
        )
    names = rank_engine_names(engine_config, tp, pp)
    if names is not None:
        check_rank_engines(Path(engine_dir), names, f"{pbtxt} {key}")
    return tp, pp


def rank_engine_names(engine_config: dict[str, Any], tp: int, pp: int) -> list[str] | None:
    """The engine file of each rank, named as TensorRT-LLM's runtime looks for it; None where unknown.

    Engines with a "version" (0.8 on): rank<r>.engine; older ones: <name>_<precision>_tp<tp>[_pp<pp>]_rank<r>.engine.
    """
    if "version" in engine_config:
        return [f"rank{rank}.engine" for rank in range(tp * pp)]
    builder = engine_config.get("builder_config", {})
    if "name" not in builder or "precision" not in builder:
        return None
    stem = f"{builder['name']}_{builder['precision']}_tp{tp}" + (f"_pp{pp}" if pp > 1 else "")
    return [f"{stem}_rank{rank}.engine" for rank in range(tp * pp)]


def unusable_files(directory: Path, names: list[str]) -> list[tuple[Path, str]]:
    """(file, why) for each of the names that is missing or empty."""
    bad = []
    for name in names:
        path = directory / name
        try:
            if os.stat(path).st_size == 0:
                bad.append((path, "empty (0 bytes)"))
        except FileNotFoundError:
            bad.append((path, "missing"))
    return bad


def check_rank_engines(engine_dir: Path, names: list[str], named_by: str) -> None:
    bad = unusable_files(engine_dir, names)
    if bad:
        path, why = bad[0]
        raise ModelRepositoryError(
            f"{path}: {why}; {len(bad)} of the {len(names)} rank engines ({names[0]} .. {names[-1]}) of the engine "
            f"named by {named_by} are missing or empty; copy the whole engine directory there or rebuild the engine"
        )
