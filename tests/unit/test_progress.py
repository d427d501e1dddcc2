"""Startup progress: the model repository's sizes, the leader's bookkeeping and its words."""

from __future__ import annotations

from pathlib import Path

import pytest

from launcher.config import LaunchConfig
from launcher.loadmeter import PodFigures
from launcher.model_repository import rank_load_files
from launcher.progress import StartupProgress, Summary, duration, format_line, rank_sizes, readiness_suffix
from tests.unit.test_model_repository import NEW_LAYOUT, make_repo

MiB = 2**20


def toy_repo(tmp_path: Path, weights: str) -> Path:
    model = tmp_path / "repo" / "toy"
    model.mkdir(parents=True)
    (model / "config.pbtxt").write_text(
        'name: "toy"\nbackend: "python"\n'
        f'parameters: {{ key: "rank_weights" value: {{ string_value: "{weights}" }} }}\n')
    return tmp_path / "repo"


def test_tensorrt_llm_ranks_read_their_engine_files(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, NEW_LAYOUT)
    config = LaunchConfig(tp=4, pp=2, gpus_per_pod=4, model_repo=repo)
    engines = tmp_path / "engines"
    assert rank_load_files(config) == [engines / f"rank{r}.engine" for r in range(8)]
    (engines / "rank5.engine").write_bytes(b"x" * 1000)
    assert rank_sizes(config) == {**{r: 6 for r in range(8)}, 5: 1000}  # make_repo writes b"engine"


def test_a_rank_weights_parameter_names_each_ranks_file(tmp_path: Path) -> None:
    repo = toy_repo(tmp_path, "shard-{rank}.bin")
    config = LaunchConfig(tp=2, gpus_per_pod=2, model_repo=repo, model="toy")
    assert rank_load_files(config) == [repo / "toy" / "shard-0.bin", repo / "toy" / "shard-1.bin"]
    (repo / "toy" / "shard-0.bin").write_bytes(b"x" * 10)
    assert rank_sizes(config) is None  # shard-1 cannot be sized: no total, no failure
    (repo / "toy" / "shard-1.bin").write_bytes(b"x" * 20)
    assert rank_sizes(config) == {0: 10, 1: 20}


@pytest.mark.parametrize("weights", ["", None])
def test_a_model_that_names_no_files_has_no_total(tmp_path: Path, weights: str | None) -> None:
    repo = toy_repo(tmp_path, weights) if weights is not None else make_repo(tmp_path, {"something": "else"})
    model = "toy" if weights is not None else "tensorrt_llm"
    assert rank_sizes(LaunchConfig(model_repo=repo, model=model)) is None


def test_unfilled_engine_template_has_no_total(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, NEW_LAYOUT, engine="${engine_dir}")
    assert rank_load_files(LaunchConfig(tp=4, pp=2, gpus_per_pod=4, model_repo=repo)) is None


def progress(sizes: dict[int, int] | None = None, stall_s: float = 10.0) -> StartupProgress:
    """Two pods of two ranks, 100 MiB each unless told."""
    sizes = {r: 100 * MiB for r in range(4)} if sizes is None else sizes
    return StartupProgress({"a": [0, 1], "b": [2, 3]}, sizes or None, stall_s, window_s=5.0, started=0.0)


def pods(a: tuple[float, float], b: tuple[float, float] | None) -> dict[str, PodFigures | None]:
    return {"a": PodFigures({0: int(a[0] * MiB), 1: int(a[1] * MiB)}, 2),
            "b": None if b is None else PodFigures({2: int(b[0] * MiB), 3: int(b[1] * MiB)}, 2)}


def test_totals_rate_eta_and_the_slowest_pod() -> None:
    p = progress()
    p.update(0.0, pods((0, 0), (0, 0)))
    p.update(2.0, pods((20, 20), (10, 10)))  # a: 20 MiB/s, b: 10 MiB/s
    summary = p.summary(2.0)
    assert (summary.read, summary.total) == (60 * MiB, 400 * MiB)
    assert summary.ratio == pytest.approx(0.15)
    assert summary.rate == pytest.approx(30 * MiB)
    assert summary.slowest.pod == "b" and summary.slowest.ratio == pytest.approx(0.1)
    assert summary.eta_s == pytest.approx(18.0)  # b's 180 MiB left at 10 MiB/s; a needs 8 s
    assert (summary.alive, summary.world) == (4, 4)


def test_rate_is_over_the_recent_window() -> None:
    p = progress(sizes={r: 1000 * MiB for r in range(4)})
    for t in range(11):
        slow = t <= 5
        read = 2.0 * t if slow else 10.0 + 20.0 * (t - 5)
        p.update(float(t), pods((read, read), (read, read)))
    assert p.rate("a") == pytest.approx(40 * MiB)  # the last 5 s only


def test_a_rank_read_past_its_size_counts_as_its_size() -> None:
    p = progress()
    p.update(1.0, pods((110, 100), (50, 50)))
    summary = p.summary(1.0)
    assert summary.pods[0].read == 200 * MiB and summary.pods[0].ratio == 1.0 and summary.pods[0].eta_s == 0.0


def test_without_sizes_there_is_no_total_nor_eta() -> None:
    p = progress(sizes={})
    p.update(0.0, pods((0, 0), (0, 0)))
    p.update(1.0, pods((1, 1), (1, 1)))
    summary = p.summary(1.0)
    assert summary.total is None and summary.ratio is None and summary.eta_s is None
    assert summary.read == 4 * MiB and summary.rate == pytest.approx(4 * MiB)


def test_a_stall_is_reported_once_with_its_pod_and_rank() -> None:
    p = progress(stall_s=10.0)
    stalls = [(t, s) for t in range(0, 40) for s in p.update(float(t), pods((t, t), (t, min(t, 7))))]
    assert [(t, s.pod, s.rank) for t, s in stalls] == [(17, "b", 3)]  # still from t=7: once
    assert str(stalls[0][1]) == "rank 3 in pod b has read no byte for 10s, at 7.0% of its 100.0 MiB"


def test_a_stall_that_ends_can_be_reported_again() -> None:
    p = progress(stall_s=3.0)
    reads = [0, 1, 1, 1, 1, 2, 2, 2, 2, 2]
    stalls = [t for t, r in enumerate(reads) for _ in p.update(float(t), pods((r, r), (r, r)))]
    assert stalls == [4, 4, 4, 4, 8, 8, 8, 8]  # every rank, each stall once


def test_no_stall_for_a_rank_done_reading_nor_for_a_pod_that_does_not_answer() -> None:
    p = progress(stall_s=2.0)
    assert [s for t in range(10) for s in p.update(float(t), pods((100, 100), None))] == []
    summary = p.summary(10.0)
    assert [pod.answered for pod in summary.pods] == [True, False]
    assert summary.eta_s is None  # b's figures are unknown


def test_the_line_and_the_readiness_suffix() -> None:
    p = progress()
    p.update(0.0, pods((0, 0), (0, 0)))
    p.update(100.0, pods((60, 60), (30, 30)))
    line = format_line(p.summary(100.0), "rank 0: not answering yet")
    # the ETA is b's: 140 MiB left at 0.6 MiB/s
    assert line == ("startup 1m40s: ranks 4/4 alive, read 180.0 MiB / 400.0 MiB (45.0%), slowest pod b "
                    "60.0 MiB / 200.0 MiB (30.0%), 1.8 MiB/s, ETA 3m53s; rank 0: not answering yet")
    assert readiness_suffix(p.summary(100.0)) == "; loading 45.0% (180.0 MiB of 400.0 MiB), ETA 3m53s"


def test_the_line_without_a_total_with_gpus_and_a_silent_pod() -> None:
    p = StartupProgress({"solo": [0, 1], "mute": [2, 3]}, None, 10.0, 5.0, 0.0)
    p.update(0.0, {"solo": PodFigures({0: 0, 1: 0}, 2, {0: 3 * 2**30, 1: 2**30}), "mute": None})
    p.update(2.0, {"solo": PodFigures({0: 2 * MiB, 1: 2 * MiB}, 2, {0: 3 * 2**30, 1: 2**30}), "mute": None})
    line = format_line(p.summary(2.0), "models: toy_tp LOADING")
    assert line == ("startup 2s: ranks 2/4 alive, read 4.0 MiB (total unknown), slowest pod mute 0 B (total "
                    "unknown), 2.0 MiB/s, GPU memory 4.0 GiB used on 2 GPUs, no figures from mute; "
                    "models: toy_tp LOADING")
    assert readiness_suffix(p.summary(2.0)) == "; loading: read 4.0 MiB"


def test_eta_unknown_while_nothing_moves() -> None:
    summary = Summary(5.0, 1, 1, (), 0, 0)
    assert summary.eta_s is None
    p = StartupProgress({"a": [0]}, {0: MiB}, 10.0, 5.0, 0.0)
    p.update(0.0, {"a": PodFigures({0: 0}, 1)})
    p.update(1.0, {"a": PodFigures({0: 0}, 1)})
    assert "ETA unknown (no progress)" in format_line(p.summary(1.0), "x")


@pytest.mark.parametrize("seconds,text", [(0, "0s"), (59.4, "59s"), (60, "1m00s"), (3599, "59m59s"),
                                          (3600, "1h00m"), (7384, "2h03m")])
def test_duration(seconds: float, text: str) -> None:
    assert duration(seconds) == text
