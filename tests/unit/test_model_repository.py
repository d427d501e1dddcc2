"""Engine check against configs in TensorRT-LLM's own formats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from launcher.config import LaunchConfig
from launcher.errors import EngineMismatchError, ModelRepositoryError
from launcher.model_repository import check_engine, read_parameters
from tests.conftest import REPO

PBTXT = """name: "tensorrt_llm"
backend: "tensorrtllm"
parameters: {{
  key: "{key}"
  value: {{
    string_value: "{engine}"
  }}
}}
parameters: {{ key: "batching_strategy" value: {{ string_value: "inflight_fused_batching" }} }}
"""


def make_repo(tmp_path: Path, engine_config: dict[str, object] | None, key: str = "gpt_model_path",
              engine: str | None = None) -> Path:
    engine_dir = tmp_path / "engines"
    engine_dir.mkdir()
    if engine_config is not None:
        (engine_dir / "config.json").write_text(json.dumps(engine_config))
    model = tmp_path / "repo" / "tensorrt_llm"
    model.mkdir(parents=True)
    (model / "config.pbtxt").write_text(PBTXT.format(key=key, engine=engine or engine_dir))
    return tmp_path / "repo"


NEW_LAYOUT = {"version": "0.12.0", "pretrained_config": {"mapping": {"world_size": 8, "tp_size": 4, "pp_size": 2}},
              "build_config": {"max_batch_size": 4}}
OLD_LAYOUT = {"builder_config": {"tensor_parallel": 4, "pipeline_parallel": 2, "name": "llama"}}


@pytest.mark.parametrize("layout", [NEW_LAYOUT, OLD_LAYOUT], ids=["pretrained_config", "builder_config"])
def test_matching_engine_passes(tmp_path: Path, layout: dict[str, object]) -> None:
    repo = make_repo(tmp_path, layout)
    assert check_engine(LaunchConfig(tp=4, pp=2, gpus_per_pod=4, model_repo=repo)) == (4, 2)


@pytest.mark.parametrize("layout", [NEW_LAYOUT, OLD_LAYOUT], ids=["pretrained_config", "builder_config"])
def test_mismatch_names_both_shapes(tmp_path: Path, layout: dict[str, object]) -> None:
    repo = make_repo(tmp_path, layout, key="engine_dir")
    with pytest.raises(EngineMismatchError) as info:
        check_engine(LaunchConfig(tp=8, pp=1, gpus_per_pod=8, model_repo=repo))
    assert "built for tp=4 pp=2 (world 8)" in str(info.value)
    assert "asks tp=8 pp=1" in str(info.value)


def test_unfilled_template(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, NEW_LAYOUT, engine="${engine_dir}")
    with pytest.raises(ModelRepositoryError, match="unfilled template"):
        check_engine(LaunchConfig(tp=4, pp=2, model_repo=repo))


def test_missing_engine_config(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, None)
    with pytest.raises(ModelRepositoryError, match="has no config.json"):
        check_engine(LaunchConfig(tp=4, pp=2, model_repo=repo))


def test_garbage_engine_config(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"something": "else"})
    with pytest.raises(ModelRepositoryError, match="not a TensorRT-LLM engine config"):
        check_engine(LaunchConfig(tp=4, pp=2, model_repo=repo))


def test_models_without_engine_are_not_checked(tmp_path: Path) -> None:
    toy = REPO / "launcher" / "examples" / "model_repository"
    assert check_engine(LaunchConfig(model_repo=toy, model="toy_tp")) is None
    assert read_parameters(toy / "toy_tp" / "config.pbtxt") == {"collective": "auto"}
