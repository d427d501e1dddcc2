"""Cost of the leader's model repository check: the full check against the old one, side by side.

    .venv/bin/python -m benchmarks.repository_check [--runs 50] [--tp 8] [--pp 2] [--engine-mib 1]

Builds, in a temporary directory, a repository shaped like TensorRT-LLM's inflight_batcher_llm
(ensemble, preprocessing, tensorrt_llm, postprocessing; the tensorrt_llm config.pbtxt padded to
the size of the upstream template, about 30 kB with its comments and optional parameters) and an
engine of tp x pp rank files of --engine-mib each (sparse where the file system allows). Times,
alternating, the full check the leader runs before mpirun (check_model_repository + check_engine)
and the old one: the same existence checks, the config.model parameters and the engine's
config.json (what check_model_repository and check_engine did before the repository scan and the
rank files were added). Prints the median, min and max of --runs runs each, and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from launcher.config import LaunchConfig
from launcher.model_repository import _PARAMETER, check_engine, check_model_repository, engine_parallelism
from tests.unit.test_model_repository import build_trtllm_repo


def pad_like_upstream(pbtxt: Path, inputs: int = 100, parameters: int = 60) -> None:
    """Add inputs (with comments) and unfilled optional parameters, as in the upstream template."""
    extra = [f'# input {i}: optional, see the backend documentation ${{not_a_template}}\n'
             f'input [ {{ name: "optional_input_{i}" data_type: TYPE_FP32 dims: [ 1 ] '
             'reshape: { shape: [ ] } optional: true } ]\n' for i in range(inputs)]
    extra += [f'parameters: {{\n  key: "optional_{i}"\n  value: {{\n    string_value: "${{optional_{i}}}"\n  }}\n}}\n'
              for i in range(parameters)]
    pbtxt.write_text(pbtxt.read_text() + "".join(extra))


def full_check(config: LaunchConfig) -> None:
    check_model_repository(config)
    check_engine(config)


def old_check(config: LaunchConfig) -> None:
    """What the leader checked before: repository, model and config.pbtxt exist; the engine's tp/pp."""
    model_dir = config.model_repo / config.model
    assert config.model_repo.is_dir() and model_dir.is_dir() and (model_dir / "config.pbtxt").is_file()
    params = {m["key"]: m["value"] for m in _PARAMETER.finditer((model_dir / "config.pbtxt").read_text())}
    engine_json = Path(params["gpt_model_path"]) / "config.json"
    assert engine_json.is_file()
    assert engine_parallelism(json.loads(engine_json.read_text())) == (config.tp, config.pp)


def timed(check: Callable[[LaunchConfig], None], config: LaunchConfig) -> float:
    started = time.perf_counter()
    check(config)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--tp", type=int, default=8)
    parser.add_argument("--pp", type=int, default=2)
    parser.add_argument("--engine-mib", type=float, default=1.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        repo = build_trtllm_repo(Path(tmp), args.tp, args.pp, int(args.engine_mib * 2**20))
        pad_like_upstream(repo.config("tensorrt_llm"))
        config = LaunchConfig(tp=args.tp, pp=args.pp, gpus_per_pod=args.tp, model_repo=repo.repo,
                              model="tensorrt_llm")
        full_check(config)  # both pass (and the files are in the page cache) before anything is timed
        old_check(config)
        times: dict[str, list[float]] = {"full": [], "old": []}
        for _ in range(args.runs):
            times["full"].append(timed(full_check, config))
            times["old"].append(timed(old_check, config))
        sizes = {name: (repo.repo / name / "config.pbtxt").stat().st_size for name in sorted(os.listdir(repo.repo))}
    print(f"# {platform.node()} {os.cpu_count()} cpus, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
          f"python {platform.python_version()}")
    print(f"# {args.tp * args.pp} rank engines of {args.engine_mib:g} MiB (tp={args.tp} pp={args.pp}), "
          f"config.pbtxt bytes: {', '.join(f'{n} {s}' for n, s in sizes.items())}; {args.runs} runs each")
    print("| check | median | min | max |")
    print("|---|---|---|---|")
    for name, label in (("full", "full (scan + engine files)"), ("old", "old (exists + config.json)")):
        values = times[name]
        print(f"| {label} | {statistics.median(values) * 1e3:.3f} ms | {min(values) * 1e3:.3f} ms | "
              f"{max(values) * 1e3:.3f} ms |")
    print(f"ratio of medians full/old: {statistics.median(times['full']) / statistics.median(times['old']):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
