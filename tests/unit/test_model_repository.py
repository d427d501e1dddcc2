"""Repository and engine checks against configs in TensorRT-LLM's own formats."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from launcher.cli import main
from launcher.config import LaunchConfig
from launcher.errors import EngineMismatchError, ExitCode, ModelRepositoryError
from launcher.model_repository import (
    check_engine,
    check_model_repository,
    rank_engine_names,
    read_parameters,
    strip_comments,
)
from tests.conftest import REPO, free_port

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
    for name in rank_engine_names(engine_config or {}, 4, 2) or []:
        (engine_dir / name).write_bytes(b"engine")
    model = tmp_path / "repo" / "tensorrt_llm"
    model.mkdir(parents=True)
    (model / "config.pbtxt").write_text(PBTXT.format(key=key, engine=engine or engine_dir))
    return tmp_path / "repo"


NEW_LAYOUT = {"version": "0.12.0", "pretrained_config": {"mapping": {"world_size": 8, "tp_size": 4, "pp_size": 2}},
              "build_config": {"max_batch_size": 4}}
OLD_LAYOUT = {"builder_config": {"tensor_parallel": 4, "pipeline_parallel": 2, "name": "llama", "precision": "float16"}}


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


def test_engines_before_0_8_have_their_own_file_names(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, OLD_LAYOUT)
    (tmp_path / "engines" / "llama_float16_tp4_pp2_rank7.engine").unlink()
    with pytest.raises(ModelRepositoryError, match=r"llama_float16_tp4_pp2_rank7.engine: missing; 1 of the 8 rank "
                       r"engines \(llama_float16_tp4_pp2_rank0.engine .. llama_float16_tp4_pp2_rank7.engine\)"):
        check_engine(LaunchConfig(tp=4, pp=2, gpus_per_pod=4, model_repo=repo))


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
    assert read_parameters(toy / "toy_tp" / "config.pbtxt") == {"collective": "auto", "rank_weights": "",
                                                                 "read_rate": ""}


# A repository shaped like TensorRT-LLM's all_models/inflight_batcher_llm after fill_template.py, with the
# optional parameters left unfilled as its documentation does (the models read them as "not set").
ENSEMBLE = """name: "ensemble"
platform: "ensemble"
max_batch_size: 8
input [ { name: "text_input" data_type: TYPE_STRING dims: [ 1 ] } ]
output [ { name: "text_output" data_type: TYPE_STRING dims: [ -1 ] } ]
ensemble_scheduling {
  step [
    {
      model_name: "preprocessing"
      model_version: -1
      input_map { key: "QUERY" value: "text_input" }
      output_map { key: "INPUT_ID" value: "_INPUT_ID" }
    },
    {
      model_name: "tensorrt_llm"
      model_version: -1
      input_map { key: "input_ids" value: "_INPUT_ID" }
      output_map { key: "output_ids" value: "_TOKENS_BATCH" }
    },
    {
      model_name: "postprocessing"
      model_version: -1
      input_map { key: "TOKENS_BATCH" value: "_TOKENS_BATCH" }
      output_map { key: "OUTPUT" value: "text_output" }
    }
  ]
}
"""

TOKENIZER_MODEL = """name: "{name}"
backend: "python"
max_batch_size: 8
input [ {{ name: "QUERY" data_type: TYPE_STRING dims: [ 1 ] }} ]
output [ {{ name: "INPUT_ID" data_type: TYPE_INT32 dims: [ -1 ] }} ]
parameters {{
  key: "tokenizer_dir"
  value: {{
    string_value: "{tokenizer}"
  }}
}}
parameters {{
  key: "add_special_tokens"
  value: {{
    string_value: "${{add_special_tokens}}"
  }}
}}
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
"""

TENSORRT_LLM = """# Filled with: fill_template.py -i tensorrt_llm/config.pbtxt triton_backend:${{triton_backend}},...
name: "tensorrt_llm"
backend: "{backend}"
max_batch_size: 8
model_transaction_policy {{
  decoupled: False
}}
dynamic_batching {{
    preferred_batch_size: [ 8 ]
    max_queue_delay_microseconds: 0
}}
input [
  {{ name: "input_ids" data_type: TYPE_INT32 dims: [ -1 ] allow_ragged_batch: true }}
]
output [
  {{ name: "output_ids" data_type: TYPE_INT32 dims: [ -1, -1 ] }}
]
instance_group [ {{ count: 1 kind : KIND_CPU }} ]
parameters: {{
  key: "gpt_model_path"
  value: {{
    string_value: "{engine}"
  }}
}}
parameters: {{
  key: "batching_strategy"
  value: {{
    string_value: "inflight_fused_batching"
  }}
}}
parameters: {{
  key: "max_tokens_in_paged_kv_cache"
  value: {{
    string_value: "${{max_tokens_in_paged_kv_cache}}"
  }}
}}
# guided decoding is off: its tokenizer_dir stays unfilled
parameters: {{
  key: "tokenizer_dir"
  value: {{
    string_value: "${{tokenizer_dir}}"
  }}
}}
parameters: {{
  key: "guided_decoding_backend"
  value: {{
    string_value: "${{guided_decoding_backend}}"
  }}
}}
parameters: {{
  key: "executor_worker_path"
  value: {{
    string_value: "/opt/tritonserver/backends/tensorrtllm/trtllmExecutorWorker#1"
  }}
}}
"""


@dataclasses.dataclass
class TrtllmRepo:
    repo: Path
    engine: Path
    tokenizer: Path

    def config(self, name: str) -> Path:
        return self.repo / name / "config.pbtxt"

    def edit(self, name: str, old: str, new: str) -> None:
        text = self.config(name).read_text()
        assert old in text
        self.config(name).write_text(text.replace(old, new))

    def launch(self) -> LaunchConfig:
        return LaunchConfig(tp=2, pp=2, gpus_per_pod=2, model_repo=self.repo, model="tensorrt_llm")


def build_trtllm_repo(root: Path, tp: int = 2, pp: int = 2, engine_bytes: int = 64) -> TrtllmRepo:
    """Ensemble, preprocessing, tensorrt_llm, postprocessing under root/repo; a tp x pp engine, a tokenizer."""
    engine, tokenizer, repo = root / "engines" / "llama", root / "tokenizer", root / "repo"
    engine.mkdir(parents=True)
    (engine / "config.json").write_text(json.dumps(
        {"version": "0.12.0", "pretrained_config": {"mapping": {"world_size": tp * pp, "tp_size": tp, "pp_size": pp}}}))
    for rank in range(tp * pp):
        with open(engine / f"rank{rank}.engine", "wb") as f:
            f.write(b"\x01")
            f.truncate(engine_bytes)  # sparse where the file system allows
    tokenizer.mkdir()
    (tokenizer / "tokenizer.json").write_text("{}")
    configs = {
        "ensemble": ENSEMBLE,
        "preprocessing": TOKENIZER_MODEL.format(name="preprocessing", tokenizer=tokenizer),
        "tensorrt_llm": TENSORRT_LLM.format(backend="tensorrtllm", engine=engine),
        "postprocessing": TOKENIZER_MODEL.format(name="postprocessing", tokenizer=tokenizer),
    }
    for name, text in configs.items():
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "config.pbtxt").write_text(text)
    return TrtllmRepo(repo, engine, tokenizer)


@pytest.fixture
def trtllm(tmp_path: Path) -> TrtllmRepo:
    """The repository for tp=2 pp=2 (four rank engine files)."""
    return build_trtllm_repo(tmp_path)


def check_all(config: LaunchConfig) -> tuple[int, int] | None:
    """What the leader checks before mpirun (Leader.preflight_checks)."""
    check_model_repository(config)
    return check_engine(config)


def refusal(config: LaunchConfig) -> str:
    with pytest.raises(ModelRepositoryError) as info:
        check_all(config)
    message = str(info.value)
    assert "\n" not in message and info.value.exit_code == ExitCode.MODEL_REPOSITORY
    return message


def test_well_formed_repository_passes(trtllm: TrtllmRepo) -> None:
    # optional parameters left as ${...}, a ${...} in a comment and a "#" inside a string are all fine
    assert check_all(trtllm.launch()) == (2, 2)


def test_toy_repository_passes() -> None:
    toy = REPO / "launcher" / "examples" / "model_repository"
    assert check_all(LaunchConfig(tp=2, gpus_per_pod=2, model_repo=toy, model="toy_tp")) is None


def test_unfilled_backend(trtllm: TrtllmRepo) -> None:
    trtllm.edit("tensorrt_llm", 'backend: "tensorrtllm"', 'backend: "${triton_backend}"')
    message = refusal(trtllm.launch())
    assert message.startswith(f"{trtllm.config('tensorrt_llm')}: backend is the unfilled template ${{triton_backend}};")
    assert message.endswith("triton_backend:tensorrtllm")


def test_unfilled_tokenizer_path(trtllm: TrtllmRepo) -> None:
    trtllm.edit("preprocessing", str(trtllm.tokenizer), "${tokenizer_dir}")
    message = refusal(trtllm.launch())
    assert message.startswith(f"{trtllm.config('preprocessing')}: parameter tokenizer_dir is the unfilled template")
    assert "tokenizer_dir:<tokenizer directory>" in message


def test_unfilled_fields_are_all_named_with_one_fix(trtllm: TrtllmRepo) -> None:
    # postprocessing never went through fill_template.py: Triton cannot even parse it
    trtllm.config("postprocessing").write_text(
        TOKENIZER_MODEL.format(name="postprocessing", tokenizer="${tokenizer_dir}")
        .replace("max_batch_size: 8", "max_batch_size: ${triton_max_batch_size}")
        .replace("count: 1", "count: ${postprocessing_instance_count}"))
    message = refusal(trtllm.launch())
    path = trtllm.config("postprocessing")
    assert message.startswith(f"{path}: max_batch_size is the unfilled template ${{triton_max_batch_size}} "
                              "(and 2 more: parameter tokenizer_dir, count);")
    assert message.endswith(f"-i {path} triton_max_batch_size:<value>,tokenizer_dir:<tokenizer directory>,"
                            "postprocessing_instance_count:<value>")


def test_tokenizer_dir_missing(trtllm: TrtllmRepo) -> None:
    gone = trtllm.tokenizer.parent / "no-tokenizer"
    trtllm.edit("postprocessing", str(trtllm.tokenizer), str(gone))
    message = refusal(trtllm.launch())
    assert message.startswith(f"{trtllm.config('postprocessing')}: parameter tokenizer_dir names '{gone}', "
                              "which does not exist;")


def test_tokenizer_dir_empty(trtllm: TrtllmRepo) -> None:
    trtllm.edit("preprocessing", str(trtllm.tokenizer), "")
    assert "parameter tokenizer_dir names '', which does not exist" in refusal(trtllm.launch())
    trtllm.edit("tensorrt_llm", '"${tokenizer_dir}"', '""')  # guided decoding's own: empty means not set
    trtllm.edit("preprocessing", 'string_value: ""', f'string_value: "{trtllm.tokenizer}"')
    assert check_all(trtllm.launch()) == (2, 2)


def test_tokenizer_dir_of_bls_is_checked_too(trtllm: TrtllmRepo) -> None:
    bls = trtllm.repo / "tensorrt_llm_bls"
    bls.mkdir()
    (bls / "config.pbtxt").write_text(TOKENIZER_MODEL.format(name="tensorrt_llm_bls",
                                                             tokenizer=trtllm.tokenizer / "tokenizer.json"))
    assert "which is not a directory" in refusal(trtllm.launch())


def test_missing_rank_engine(trtllm: TrtllmRepo) -> None:
    (trtllm.engine / "rank2.engine").unlink()
    (trtllm.engine / "rank3.engine").unlink()
    message = refusal(trtllm.launch())
    assert message.startswith(f"{trtllm.engine / 'rank2.engine'}: missing; 2 of the 4 rank engines")
    assert "copy the whole engine directory" in message


def test_empty_engine_file(trtllm: TrtllmRepo) -> None:
    (trtllm.engine / "rank1.engine").write_bytes(b"")
    message = refusal(trtllm.launch())
    assert message.startswith(f"{trtllm.engine / 'rank1.engine'}: empty (0 bytes); 1 of the 4 rank engines")


def test_parallelism_mismatch_comes_before_missing_files(trtllm: TrtllmRepo) -> None:
    (trtllm.engine / "rank0.engine").unlink()
    with pytest.raises(EngineMismatchError):
        check_all(LaunchConfig(tp=4, pp=1, gpus_per_pod=4, model_repo=trtllm.repo, model="tensorrt_llm"))


def test_ensemble_naming_a_missing_model(trtllm: TrtllmRepo) -> None:
    shutil.rmtree(trtllm.repo / "postprocessing")
    message = refusal(trtllm.launch())
    assert message.startswith(f"{trtllm.config('ensemble')}: ensemble step model_name 'postprocessing' is no model "
                              "of the repository (found: ensemble, preprocessing, tensorrt_llm);")


@pytest.mark.parametrize("line,stripped", [
    ('backend: "tensorrtllm"  # was ${triton_backend}', 'backend: "tensorrtllm"  '),
    ("# a whole comment line with ${tokenizer_dir}", ""),
    ('string_value: "/models/v#2" # "quoted" comment', 'string_value: "/models/v#2" '),
    ("string_value: 'a#b' # c", "string_value: 'a#b' "),
    ('string_value: "no comment at all"', 'string_value: "no comment at all"'),
])
def test_comments_are_stripped_outside_strings(line: str, stripped: str) -> None:
    assert strip_comments(f"name: x\n{line}\nmax_batch_size: 8\n") == f"name: x\n{stripped}\nmax_batch_size: 8\n"


def test_commented_out_parameters_are_not_read(trtllm: TrtllmRepo) -> None:
    trtllm.edit("tensorrt_llm", 'parameters: {\n  key: "gpt_model_path"',
                '# parameters: { key: "gpt_model_path" value: { string_value: "/old/engine" } }\nparameters: {\n'
                '  key: "gpt_model_path"')
    parameters = read_parameters(trtllm.config("tensorrt_llm"))
    assert parameters["gpt_model_path"] == str(trtllm.engine)
    assert parameters["executor_worker_path"].endswith("trtllmExecutorWorker#1")  # a "#" in a string stays


def test_cli_refuses_before_mpirun_starts(tmp_path: Path, clean_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    trtllm = build_trtllm_repo(tmp_path, tp=2, pp=1)
    marker = tmp_path / "mpirun-was-called"
    mpirun = tmp_path / "mpirun"
    mpirun.write_text(f"#!/bin/sh\ntouch {marker}\n")
    mpirun.chmod(0o755)
    argv = ["local", "--model-repo", str(trtllm.repo), "--model", "tensorrt_llm", "--ranks", "2",
            "--mpirun", str(mpirun), "--health-port", str(free_port())]
    (trtllm.engine / "rank1.engine").unlink()
    assert main(argv) == ExitCode.MODEL_REPOSITORY
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"launcher: error: {trtllm.engine / 'rank1.engine'}: missing; 1 of the 2 rank engines "
                   f"(rank0.engine .. rank1.engine) of the engine named by {trtllm.config('tensorrt_llm')} "
                   "gpt_model_path are missing or empty; copy the whole engine directory there or rebuild the engine"]
    assert not marker.exists()
    # The stand-in is the one the launch would run: with the engine whole, it is called (and refused as no MPI).
    (trtllm.engine / "rank1.engine").write_bytes(b"\x00")
    assert main(argv) == ExitCode.CONFIG_INVALID
    assert marker.exists()
