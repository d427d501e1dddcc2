"""Rank-per-GPU Triton through the launcher, on a lent NVIDIA machine.

    python -m benchmarks.gpu.gpu_bench [--rounds 3]      (run by benchmarks/gpu/run.sh)

For 1, 2 and 4 ranks (as many as there are GPUs), with the toy model's NCCL
variant and Open MPI 4.1 (/usr/bin/mpirun):
- start -> rank 0 ready, `launcher local` versus bare mpirun, alternated;
- which GPU each rank's processes hold (nvidia-smi), the answer of a
  request (it needs every rank), latency and throughput;
- SIGTERM -> no process left on any GPU;
then preflight's NCCL bus bandwidth against a plain PyTorch all_reduce loop,
a two-pod layout (2 GPUs per pod sandbox) where the tools exist, and an
Nsight Systems trial. Writes everything to $OUT/gpu-results.json and prints a
summary last.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import glob
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import tritonclient.http as httpclient

from benchmarks.launch import alternate, launcher_start, launcher_stop
from tests.integration.launch import expected_output, infer, kill_leftovers, launch_env, private_repo

REPO = Path(__file__).resolve().parents[2]

MPIRUN = "/usr/bin/mpirun"
# NVLink multicast stays off on the lent machines (see the device notes).
SAFE_ENV = ["--env=NCCL_NVLS_ENABLE=0", "--env=TORCH_SYMM_MEM_DISABLE_MULTICAST=1", "--env=NVSHMEM_DISABLE_NVLS=1"]
EXTRA = [f"--mpirun={MPIRUN}", *SAFE_ENV]
OUT = Path(os.environ.get("GPU_BENCH_OUT") or os.environ.get("OUT") or tempfile.mkdtemp(prefix="gpu-out-"))
OUT.mkdir(parents=True, exist_ok=True)


def nvidia_smi(*query: str) -> list[list[str]]:
    if shutil.which("nvidia-smi") is None:
        return []
    done = subprocess.run(["nvidia-smi", *query, "--format=csv,noheader,nounits"], capture_output=True, text=True)
    return [[c.strip() for c in line.split(",")] for line in done.stdout.strip().splitlines() if line.strip()]


def gpu_holders() -> dict[int, list[str]]:
    holders: dict[int, list[str]] = {}
    for pid, uuid in nvidia_smi("--query-compute-apps=pid,gpu_uuid"):
        holders.setdefault(int(pid), []).append(uuid)
    return holders


def rank_gpus(launch: Any) -> list[dict[str, Any]]:
    """Per rank: GPUs held by its tritonserver and by its python backend stub."""
    holders, uuids = gpu_holders(), [row[0] for row in nvidia_smi("--query-gpu=uuid")]
    index = {u: i for i, u in enumerate(uuids)}
    rows = []
    for server in launch.rank_processes():
        rank = next(a.split("rank")[1] for a in server.cmdline() if a.startswith("--id=rank"))
        stubs = [c.pid for c in server.children(recursive=True) if "stub" in c.name()]
        rows.append({
            "rank": int(rank),
            "server_gpus": sorted(index[u] for u in holders.get(server.pid, [])),
            "stub_gpus": sorted(index[u] for s in stubs for u in holders.get(s, [])),
        })
    return sorted(rows, key=lambda r: r["rank"])


def latency(port: int, n: int = 200) -> dict[str, float]:
    client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
    x = np.arange(1024, dtype=np.float32)
    tensor = httpclient.InferInput("INPUT", [1024], "FP32")
    tensor.set_data_from_numpy(x)
    times = []
    for _ in range(n):
        start = time.perf_counter()
        client.infer("toy_tp", [tensor])
        times.append(time.perf_counter() - start)
    client.close()  # an open keep-alive connection would hold Triton's exit
    times.sort()
    return {"p50_ms": times[n // 2] * 1e3, "p99_ms": times[int(n * 0.99) - 1] * 1e3, "n": n}


def throughput(port: int, threads: int = 8, per_thread: int = 50) -> float:
    def work(_: int) -> int:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        tensor = httpclient.InferInput("INPUT", [1024], "FP32")
        tensor.set_data_from_numpy(np.ones(1024, dtype=np.float32))
        for _ in range(per_thread):
            client.infer("toy_tp", [tensor])
        client.close()
        return per_thread

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        done = sum(pool.map(work, range(threads)))
    return done / (time.perf_counter() - start)


def wait_gpus_free(timeout_s: float = 30) -> float:
    start = time.monotonic()
    while gpu_holders() and time.monotonic() - start < timeout_s:
        time.sleep(0.05)
    return time.monotonic() - start


def rank_counts(gpus: int) -> list[int]:
    return [n for n in (1, 2, 4) if n <= gpus]


def json_infer(port: int, values: list[float]) -> str:
    """The raw JSON answer (no binary tensors), kept in the results for the record."""
    body = json.dumps({"inputs": [{"name": "INPUT", "shape": [len(values)], "datatype": "FP32", "data": values}]})
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v2/models/toy_tp/infer", data=body.encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.read().decode()[:1000]
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}: {exc.read().decode()[:1000]}"


def serve(n: int, rounds: int) -> dict[str, Any]:
    launcher_ready, bare_ready, _ = alternate(n, rounds, MPIRUN, EXTRA)
    with tempfile.TemporaryDirectory() as tmp:
        launch, ready = launcher_start(n, Path(tmp), EXTRA)
        try:
            values = [1.0, -2.0, 3.5]
            raw = json_infer(launch.ports.http, values)
            answer = infer(launch.ports.http, values)
            result = {
                "ranks": n,
                "launcher_ready_s": launcher_ready + [ready],
                "bare_ready_s": bare_ready,
                "answer_ok": answer == (expected_output(values, n), n),
                "json_answer": raw,
                "gpus": rank_gpus(launch),
                "latency": latency(launch.ports.http),
                "throughput_rps": throughput(launch.ports.http),
            }
            stopping = time.monotonic()
            result["sigterm_ranks_gone_s"] = launcher_stop(launch)
            result["sigterm_gpus_free_s"] = time.monotonic() - stopping + wait_gpus_free()
            result["gpu_processes_left"] = len(gpu_holders())
        finally:
            kill_leftovers(launch)
            shutil.copy(launch.log, OUT / f"serve-{n}.log")
    result["ratio"] = statistics.median(result["launcher_ready_s"]) / statistics.median(result["bare_ready_s"])
    return result


def run_logged(step: Any, *args: Any) -> Any:
    """One step; on failure keep its error next to the others instead of losing the rest."""
    try:
        return step(*args)
    except Exception as exc:
        return {"args": list(args), "error": f"{type(exc).__name__}: {exc}"}


def preflight(n: int) -> dict[str, Any]:
    argv = [sys.executable, "-m", "launcher", "preflight", "--hosts=localhost", f"--tp={n}", f"--gpus-per-pod={n}",
            "--output=json", *EXTRA]
    done = subprocess.run(argv, capture_output=True, text=True, env=launch_env(), timeout=300)
    report = json.loads(done.stdout) if done.stdout.strip().startswith("{") else {"error": done.stderr[-2000:]}
    base = subprocess.run([sys.executable, str(REPO / "benchmarks/gpu/torch_allreduce.py"), f"--gpus={n}"],
                          capture_output=True, text=True, timeout=300)
    torch_results = json.loads(base.stdout.strip().splitlines()[-1])["torch_allreduce"] if base.returncode == 0 else []
    nccl = report.get("sweeps", {}).get("nccl", [])
    ratio = nccl[-1]["busbw"] / torch_results[-1]["busbw"] if nccl and torch_results else None
    uuids = [r.get("gpu_uuid") for r in report.get("ranks", [])]
    return {"ranks": n, "exit": done.returncode, "passed": report.get("passed"), "problems": report.get("problems"),
            "distinct_gpus": len(set(uuids)) == n, "nccl": nccl, "torch": torch_results, "busbw_ratio": ratio,
            "stderr_tail": done.stderr[-1500:] if done.returncode else ""}


def two_pods() -> dict[str, Any]:
    missing = [t for t in ("unshare", "nsenter", "ip") if shutil.which(t) is None]
    if missing:
        return {"skipped": f"missing tools: {missing}"}
    from tests.integration.launch import Ports, wait_ready
    from tests.podnet import AGENT, PodNetwork

    with PodNetwork() as net, tempfile.TemporaryDirectory() as tmp:
        pod0 = net.add_pod("pod0", env={"CUDA_VISIBLE_DEVICES": "0,1"})
        pod1 = net.add_pod("pod1", env={"CUDA_VISIBLE_DEVICES": "2,3"})
        repo, ports = private_repo(Path(tmp)), Ports.free()
        argv = [sys.executable, "-m", "launcher", "leader", "--hosts=pod0,pod1", "--tp=4", "--gpus-per-pod=2",
                f"--model-repo={repo}", "--model=toy_tp", f"--rsh-agent={AGENT}", *ports.flags(), *EXTRA]
        log = OUT / "two-pods-leader.log"
        started = time.monotonic()
        with open(log, "wb") as out:
            leader = pod0.run(argv, env=launch_env(**net.env()), stdout=out, stderr=subprocess.STDOUT)
        try:
            ready = wait_ready(ports.http, leader, host=pod0.address, timeout_s=180)
            del ready
            ready_s = time.monotonic() - started
            answer = infer(ports.http, [1.0, 2.0], host=pod0.address)
            holders = gpu_holders()
            uuids = [row[0] for row in nvidia_smi("--query-gpu=uuid")]
            stubs = {pod.name: sorted({uuids.index(u) for p in pod.processes() if "stub" in p.name()
                                       for u in holders.get(p.pid, [])}) for pod in (pod0, pod1)}
            stopping = time.monotonic()
            leader.send_signal(signal.SIGTERM)
            code = leader.wait(60)
            return {"ready_s": ready_s, "answer_ok": answer == (expected_output([1.0, 2.0], 4), 4),
                    "stub_gpus_by_pod": stubs, "exit": code, "gpus_free_s": time.monotonic() - stopping
                    + wait_gpus_free(), "gpu_processes_left": len(gpu_holders())}
        finally:
            if leader.poll() is None:
                leader.kill()
                leader.wait()


def nsys_trial() -> dict[str, Any]:
    candidates = [shutil.which("nsys")] + sorted(glob.glob("/opt/nvidia/**/nsys", recursive=True))
    binary = next((c for c in candidates if c and os.access(c, os.X_OK)), None)
    if binary is None:
        return {"nsys": None}
    output = OUT / "nsys"
    with tempfile.TemporaryDirectory() as tmp:
        try:
            # nsys writes its report after SIGTERM: give it time before SIGKILL.
            launch, ready = launcher_start(2, Path(tmp), [*EXTRA, "--nsys", f"--nsys-binary={binary}",
                                                         f"--nsys-output={output}", "--nsys-trace=cuda,nvtx",
                                                         "--stop-grace-period=90"])
        except Exception as exc:  # record what happened, whatever it was
            return {"nsys": binary, "error": str(exc)}
        try:
            infer(launch.ports.http, [1.0])
            launcher_stop(launch)
        finally:
            kill_leftovers(launch)
            shutil.copy(launch.log, OUT / "nsys-launch.log")
    time.sleep(3)
    files = {str(p.relative_to(output)): p.stat().st_size for p in output.rglob("*")} if output.exists() else {}
    return {"nsys": binary, "ready_s": ready, "files": files}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip", nargs="*", default=[], choices=["serve", "preflight", "pods", "nsys"])
    parser.add_argument("--ranks", type=int, nargs="*", help="rank counts (default: 1, 2, 4 up to the GPU count)")
    args = parser.parse_args()
    gpus = len(nvidia_smi("--query-gpu=uuid"))
    card = nvidia_smi("--query-gpu=name")[0][0] if gpus else "none"
    results: dict[str, Any] = {"card": card, "gpus": gpus, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                               "cpus": psutil.cpu_count()}
    counts = args.ranks or rank_counts(gpus)
    steps = {
        "serve": lambda: [run_logged(serve, n, args.rounds) for n in counts],
        "preflight": lambda: [preflight(n) for n in counts if n > 1],
        "pods": lambda: two_pods() if gpus >= 4 else {"skipped": "needs 4 GPUs"},
        "nsys": nsys_trial,
    }
    for name, step in steps.items():
        if name in args.skip:
            continue
        started = time.monotonic()
        try:
            results[name] = step()
        except Exception as exc:
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
        print(f"[{name} took {time.monotonic() - started:.0f}s]", flush=True)
        (OUT / "gpu-results.json").write_text(json.dumps(results, indent=2))
    print_summary(results)
    return 0


def print_summary(results: dict[str, Any]) -> None:
    print(f"\n{results['gpus']} x {results['card']}, {results['date']}")
    for s in results.get("serve", []) if isinstance(results.get("serve"), list) else []:
        if "error" in s:
            print(f"serve {s['args']}: {s['error']}")
            continue
        print(f"ranks={s['ranks']}: ready launcher {statistics.median(s['launcher_ready_s']):.2f}s bare "
              f"{statistics.median(s['bare_ready_s']):.2f}s ratio {s['ratio']:.3f}; answer_ok={s['answer_ok']}; "
              f"p50 {s['latency']['p50_ms']:.2f}ms p99 {s['latency']['p99_ms']:.2f}ms; "
              f"{s['throughput_rps']:.0f} req/s; "
              f"SIGTERM gone {s['sigterm_ranks_gone_s']:.2f}s GPUs free {s['sigterm_gpus_free_s']:.2f}s "
              f"left {s['gpu_processes_left']}; gpus {s['gpus']}")
    for p in results.get("preflight", []) if isinstance(results.get("preflight"), list) else []:
        ratio = f"{p['busbw_ratio']:.3f}" if p.get("busbw_ratio") else "n/a"
        last = p["nccl"][-1]["busbw"] / 1e9 if p.get("nccl") else 0
        base = p["torch"][-1]["busbw"] / 1e9 if p.get("torch") else 0
        print(f"preflight ranks={p['ranks']}: passed={p['passed']} distinct_gpus={p['distinct_gpus']} "
              f"nccl busbw {last:.1f} GB/s vs torch {base:.1f} GB/s ratio {ratio} {p.get('problems') or ''}")
    for key in ("pods", "nsys"):
        if key in results:
            print(f"{key}: {json.dumps(results[key])[:600]}")


if __name__ == "__main__":
    sys.exit(main())
