"""Baseline for the preflight's NCCL sweep: a plain PyTorch all_reduce loop.

    python benchmarks/gpu/torch_allreduce.py --gpus N [--max-bytes B] [--iterations K]

One process per GPU (torch.multiprocessing), the same sizes, warm-up and
iteration count as the preflight, bus bandwidth = size/time * 2(n-1)/n.
Prints one JSON line with the results.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

SIZES = [2**k for k in (12, 16, 20, 24, 27, 28)]


def worker(rank: int, world: int, port: int, sizes: list[int], iterations: int, queue: mp.Queue[object]) -> None:
    device = torch.device("cuda", rank)
    torch.cuda.set_device(device)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            device_id=device)
    results = []
    for size in sizes:
        tensor = torch.ones(size // 4, dtype=torch.float32, device=device)
        dist.all_reduce(tensor)
        torch.cuda.synchronize()
        dist.barrier()
        start = time.perf_counter()
        for _ in range(iterations):
            dist.all_reduce(tensor)
        torch.cuda.synchronize()
        slowest = torch.tensor([(time.perf_counter() - start) / iterations], device=device, dtype=torch.float64)
        dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
        seconds = float(slowest.item())
        algbw = size / seconds
        results.append({"bytes": size, "seconds": seconds, "algbw": algbw, "busbw": algbw * 2 * (world - 1) / world})
    if rank == 0:
        queue.put(results)
    dist.destroy_process_group()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gpus", type=int, required=True)
    parser.add_argument("--max-bytes", type=int, default=SIZES[-1])
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--port", type=int, default=29533)
    args = parser.parse_args()
    sizes = [s for s in SIZES if s <= args.max_bytes]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    mp.start_processes(worker, args=(args.gpus, args.port, sizes, args.iterations, queue), nprocs=args.gpus,
                       start_method="spawn")
    print(json.dumps({"torch_allreduce": queue.get(), "gpus": args.gpus, "pid": os.getpid()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
