"""The program every rank runs during preflight (``python -m launcher.preflight.rank``).

It prints one JSON line per stage on stdout, which mpirun forwards to the
leader: who this rank is and what it sees, then the result of each check.
A rank that has not finished by ``--deadline`` prints where it was stuck and
exits, so a hung peer is reported, never waited on forever.

Needs only mpi4py and numpy; torch (with CUDA) adds the NCCL sweep.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import threading
import time
from typing import Any

FABRIC_PREFIXES = ("NCCL_", "FI_", "RDMAV_", "UCX_", "CUDA_VISIBLE_DEVICES", "OMPI_MCA_", "PMIX_MCA_")
FAIL_RANK_ENV = "LAUNCHER_PREFLIGHT_FAIL_RANK"  # fault injection: this rank fails at once
_state = {"stage": "start"}


def emit(kind: str, rank: int, **fields: Any) -> None:
    print(json.dumps({"preflight": kind, "rank": rank, **fields}, default=str), flush=True)


def watchdog(rank: int, deadline_s: float) -> None:
    def expire() -> None:
        emit("timeout", rank, stage=_state["stage"], deadline_s=deadline_s)
        os._exit(124)

    timer = threading.Timer(deadline_s, expire)
    timer.daemon = True
    timer.start()


def gpu_info(local_rank: int) -> dict[str, Any]:
    try:
        import torch
    except ImportError:
        return {"gpus": 0, "gpu": None, "gpu_uuid": None}
    if not torch.cuda.is_available():
        return {"gpus": 0, "gpu": None, "gpu_uuid": None}
    count = torch.cuda.device_count()
    device = local_rank % count
    props = torch.cuda.get_device_properties(device)
    return {"gpus": count, "gpu": device, "gpu_uuid": str(getattr(props, "uuid", "")), "gpu_name": props.name}


def wait(request: Any) -> Any:
    """Complete a non-blocking MPI request, polling (a hang ends at the watchdog)."""
    while not request.Test():
        time.sleep(0.0005)


def bus_factor(world: int) -> float:
    """allreduce moves 2(n-1)/n of the buffer over the slowest link (nccl-tests' busbw)."""
    return 2 * (world - 1) / world if world > 1 else 1.0


def mpi_sweep(comm: Any, sizes: list[int], iterations: int) -> list[dict[str, float]]:
    import numpy as np
    from mpi4py import MPI

    results = []
    for size in sizes:
        send = np.ones(size // 4, dtype=np.float32)
        recv = np.empty_like(send)
        comm.Allreduce(send, recv, op=MPI.SUM)  # warm-up
        comm.Barrier()
        start = time.perf_counter()
        for _ in range(iterations):
            comm.Allreduce(send, recv, op=MPI.SUM)
        elapsed = comm.allreduce((time.perf_counter() - start) / iterations, op=MPI.MAX)
        results.append(_figures(size, elapsed, comm.Get_size()))
    return results


def nccl_sweep(comm: Any, local_rank: int, sizes: list[int], iterations: int) -> list[dict[str, float]]:
    import torch
    import torch.distributed as dist

    device = torch.device("cuda", local_rank % torch.cuda.device_count())
    torch.cuda.set_device(device)
    address = None
    if comm.Get_rank() == 0:
        with socket.socket() as s:
            s.bind(("", 0))
            address = f"tcp://{socket.gethostbyname(socket.gethostname())}:{s.getsockname()[1]}"
    address = comm.bcast(address, root=0)
    dist.init_process_group("nccl", init_method=address, rank=comm.Get_rank(), world_size=comm.Get_size(),
                            device_id=device)
    results = []
    try:
        for size in sizes:
            tensor = torch.ones(size // 4, dtype=torch.float32, device=device)
            dist.all_reduce(tensor)
            torch.cuda.synchronize()
            dist.barrier()
            start = time.perf_counter()
            for _ in range(iterations):
                dist.all_reduce(tensor)
            torch.cuda.synchronize()
            local = (time.perf_counter() - start) / iterations
            slowest = torch.tensor([local], device=device, dtype=torch.float64)
            dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
            results.append(_figures(size, float(slowest.item()), comm.Get_size()))
    finally:
        dist.destroy_process_group()
    return results


def link_sweep(comm: Any, size: int, iterations: int) -> list[dict[str, float]]:
    """Rank 0 ping-pongs ``size`` bytes with each peer in turn: one figure per link."""
    import numpy as np

    buffer = np.ones(max(size, 4) // 4, dtype=np.float32)
    rank, results = comm.Get_rank(), []
    for peer in range(1, comm.Get_size()):
        if rank == 0:
            comm.Sendrecv(buffer, dest=peer, recvbuf=buffer, source=peer)  # warm-up
            start = time.perf_counter()
            for _ in range(iterations):
                comm.Sendrecv(buffer, dest=peer, recvbuf=buffer, source=peer)
            seconds = (time.perf_counter() - start) / iterations
            results.append({"peer": peer, "bytes": buffer.nbytes, "seconds": seconds,
                            "bandwidth": 2 * buffer.nbytes / seconds})
        elif rank == peer:
            for _ in range(iterations + 1):
                comm.Sendrecv(buffer, dest=0, recvbuf=buffer, source=0)
    return results


def _figures(size: int, seconds: float, world: int) -> dict[str, float]:
    algbw = size / seconds
    return {"bytes": size, "seconds": seconds, "algbw": algbw, "busbw": algbw * bus_factor(world)}


def run(args: argparse.Namespace) -> int:
    rank = int(os.environ.get("OMPI_COMM_WORLD_RANK", os.environ.get("PMIX_RANK", "-1")))
    watchdog(rank, args.deadline)
    local_rank = int(os.environ.get("OMPI_COMM_WORLD_LOCAL_RANK", "0"))
    if os.environ.get(FAIL_RANK_ENV) == str(rank):
        emit("failed", rank, stage="start", error=f"failing on purpose ({FAIL_RANK_ENV})")
        return 3
    _state["stage"] = "mpi-init"
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank, world = comm.Get_rank(), comm.Get_size()
    fabric = {k: v for k, v in sorted(os.environ.items()) if k.startswith(FABRIC_PREFIXES)}
    emit("info", rank, host=socket.gethostname(), local_rank=local_rank, world=world, pid=os.getpid(),
         fabric=fabric, **gpu_info(local_rank))

    _state["stage"] = "barrier"
    start = time.perf_counter()
    wait(comm.Ibarrier())
    emit("barrier", rank, seconds=time.perf_counter() - start)

    _state["stage"] = "allreduce"
    import numpy as np

    mine = np.array([rank + 1], dtype=np.int64)
    total = np.zeros(1, dtype=np.int64)
    wait(comm.Iallreduce(mine, total, op=MPI.SUM))
    emit("allreduce", rank, value=int(total[0]), expected=world * (world + 1) // 2)

    sizes = [s for s in args.sizes if s <= args.max_bytes]
    _state["stage"] = "links"
    links = link_sweep(comm, min(args.max_bytes, 16 * 2**20), args.iterations)
    if rank == 0:
        emit("links", rank, results=links)
    _state["stage"] = "mpi-sweep"
    sweep = mpi_sweep(comm, sizes, args.iterations)
    if rank == 0:
        emit("sweep", rank, transport="mpi", results=sweep)
    if gpu_info(local_rank)["gpus"] and not args.no_nccl:
        _state["stage"] = "nccl-sweep"
        sweep = nccl_sweep(comm, local_rank, sizes, args.iterations)
        if rank == 0:
            emit("sweep", rank, transport="nccl", results=sweep)
    _state["stage"] = "done"
    emit("done", rank)
    return 0


DEFAULT_SIZES = [2**k for k in (12, 16, 20, 24, 27, 28)]  # 4 KiB ... 256 MiB


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launcher.preflight.rank")
    parser.add_argument("--deadline", type=float, default=120.0)
    parser.add_argument("--max-bytes", type=int, default=DEFAULT_SIZES[-1])
    parser.add_argument("--sizes", type=int, nargs="+", default=DEFAULT_SIZES)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--no-nccl", action="store_true")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
