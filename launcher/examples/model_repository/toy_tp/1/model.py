"""Toy tensor-parallel Triton model whose ranks really form one world.

Rank 0 receives a request and sends its input to every rank; each rank
computes its shard ``(rank + 1) * x``; the shards are summed onto rank 0,
which answers. Control messages travel over MPI (mpi4py); the data travels
over MPI too, or over NCCL (torch.distributed) when the collective is "nccl".

Every MPI wait is a non-blocking call polled at a short interval, so no rank
spins a core (Open MPI busy-waits in blocking calls): with eight ranks on two
cores the spinning starved the python backend's health thread, and Triton
then failed a request with "Stub process is not healthy".

Fault switches, as request parameters, for tests: ``delay_s`` keeps the
request in flight that long on rank 0 before the ranks compute (a slow
request); ``hang_rank`` makes that rank block forever instead of taking part
(a rank stuck in its collective: the world is wedged, every later request
waits too).

A slow load, for tests of the launcher's startup progress: parameter
``rank_weights`` (or ``TOY_TP_WEIGHTS``) names each rank's weights file,
``{rank}`` standing for the rank, relative to the model's directory unless
absolute; every rank reads its file at load time in chunks, at most
``read_rate`` bytes/s (or ``TOY_TP_READ_RATE``; unset or 0: as fast as it
can), then waits for the others (a barrier), as TensorRT-LLM's ranks hold
their shards before any serves.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time

import numpy as np
import triton_python_backend_utils as pb_utils

WORK_TAG = 17
POLL_INTERVAL_S = 0.0005
FINALIZE_WAIT_S = 0.5
READ_CHUNK = 1 << 20  # the largest read; a throttled rate reads a twentieth of a second's worth at a time


def _wait(request):
    """Complete an mpi4py request for a Python object without busy-waiting; return the object."""
    while True:
        done, value = request.test()
        if done:
            return value
        time.sleep(POLL_INTERVAL_S)


def _wait_all(requests):
    """Complete mpi4py buffer requests without busy-waiting."""
    while not all(r.Test() for r in requests):
        time.sleep(POLL_INTERVAL_S)


def _reduce_to_root(comm, array):
    """The element-wise sum of ``array`` over all ranks on rank 0 (None elsewhere), polled."""
    from mpi4py import MPI

    array = np.ascontiguousarray(array)
    total = np.empty_like(array) if comm.Get_rank() == 0 else None
    _wait_all([comm.Ireduce(array, total, op=MPI.SUM, root=0)])
    return total


class _MpiCollective:
    name = "mpi"

    def __init__(self, comm):
        self.comm = comm

    def pack(self, x):
        return x

    def unpack(self, message):
        return message

    def share_input(self, x):
        return x

    def close(self):
        pass

    def reduce_sum(self, shard):
        return _reduce_to_root(self.comm, np.asarray(shard, dtype=np.float32))


class _NcclCollective:
    name = "nccl"

    def __init__(self, comm):
        import torch
        import torch.distributed as dist

        self.torch, self.dist, self.comm = torch, dist, comm
        local_rank = int(os.environ.get("OMPI_COMM_WORLD_LOCAL_RANK", "0"))
        self.device = torch.device("cuda", local_rank)
        torch.cuda.set_device(self.device)
        address = None
        if comm.Get_rank() == 0:
            with socket.socket() as s:
                s.bind(("", 0))
                port = s.getsockname()[1]
            address = f"tcp://{socket.gethostbyname(socket.gethostname())}:{port}"
        address = comm.bcast(address, root=0)
        dist.init_process_group(
            "nccl",
            init_method=address,
            rank=comm.Get_rank(),
            world_size=comm.Get_size(),
            device_id=self.device,
        )

    def pack(self, x):
        return x.shape

    def unpack(self, shape):
        return np.zeros(shape, dtype=np.float32)

    def share_input(self, x):
        # Control messages carry only the shape; the values cross NCCL.
        self.torch.cuda.set_device(self.device)
        t = self.torch.zeros(x.shape, dtype=self.torch.float32, device=self.device)
        if self.comm.Get_rank() == 0:
            t.copy_(self.torch.from_numpy(x))
        self.dist.broadcast(t, src=0)
        return t

    def close(self):
        self.dist.destroy_process_group()

    def reduce_sum(self, shard):
        self.torch.cuda.set_device(self.device)
        self.dist.all_reduce(shard)
        # A copy that owns its memory: the response is read after execute returns.
        return shard.cpu().numpy().copy() if self.comm.Get_rank() == 0 else None


# The python backend stubs of the PyPI Triton convert tensors to and from
# numpy through an older pybind11 that misreads NumPy 2 arrays (wrong sizes,
# wrong values). Under NumPy 2 tensors travel by DLPack, as torch tensors
# (images with NumPy 2 have torch).
NUMPY_2 = int(np.__version__.split(".")[0]) >= 2


def _input(request, name):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if not NUMPY_2:
        return tensor.as_numpy()
    from torch.utils.dlpack import from_dlpack

    return from_dlpack(tensor.to_dlpack()).cpu().numpy().copy()


def _output(name, array):
    if not NUMPY_2:
        return pb_utils.Tensor(name, array)
    import torch

    return pb_utils.Tensor.from_dlpack(name, torch.from_numpy(np.ascontiguousarray(array)))


def _setting(args, key, env):
    """The environment variable ``env`` if set, else the model's string parameter ``key`` ("" if neither)."""
    if os.environ.get(env):
        return os.environ[env]
    params = json.loads(args["model_config"]).get("parameters", {})
    return params.get(key, {}).get("string_value", "")


def _read_weights(path, rate):
    """Read ``path`` to its end, at most ``rate`` bytes/s (0: unthrottled); return the bytes read."""
    chunk = READ_CHUNK if rate <= 0 else max(4096, min(READ_CHUNK, int(rate) // 20))
    buffer = bytearray(chunk)
    done, due = 0, time.monotonic()
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            done += n
            if rate > 0:  # the next chunk when this one's time is up: no burst after a pause
                due = max(due, time.monotonic()) + n / rate
                time.sleep(max(0.0, due - time.monotonic()))
    return done


def _choose_collective(args) -> str:
    wanted = _setting(args, "collective", "TOY_TP_COLLECTIVE") or "auto"
    if wanted == "auto":
        try:
            import torch

            wanted = "nccl" if torch.cuda.is_available() else "mpi"
        except ImportError:
            wanted = "mpi"
    return wanted


class TritonPythonModel:
    def initialize(self, args):
        from mpi4py import MPI

        self.comm = MPI.COMM_WORLD
        self.rank = self.comm.Get_rank()
        self.world = self.comm.Get_size()
        kind = _choose_collective(args)
        self.collective = _NcclCollective(self.comm) if kind == "nccl" else _MpiCollective(self.comm)
        pb_utils.Logger.log_info(
            f"toy_tp rank {self.rank}/{self.world} on {socket.gethostname()} "
            f"collective={self.collective.name}"
        )
        self._load_weights(args)
        if self.rank != 0:
            self.follower = threading.Thread(target=self._follow, daemon=True)
            self.follower.start()

    def _load_weights(self, args):
        pattern = _setting(args, "rank_weights", "TOY_TP_WEIGHTS")
        if not pattern:
            return
        path = os.path.join(args["model_repository"], pattern.replace("{rank}", str(self.rank)))
        started = time.monotonic()
        size = _read_weights(path, float(_setting(args, "read_rate", "TOY_TP_READ_RATE") or 0))
        pb_utils.Logger.log_info(f"toy_tp rank {self.rank}: read {size} bytes of {path} in "
                                 f"{time.monotonic() - started:.1f}s")
        _wait_all([self.comm.Ibarrier()])

    def _compute(self, x):
        x = self.collective.share_input(x)
        total = self.collective.reduce_sum(x * (self.rank + 1))
        contributors = _reduce_to_root(self.comm, np.ones(1, dtype=np.int32))
        return total, None if contributors is None else int(contributors[0])

    def _follow(self):
        while True:
            message = _wait(self.comm.irecv(source=0, tag=WORK_TAG))
            if message is None:
                return
            if message["hang_rank"] == self.rank:
                self._hang()
            self._compute(self.collective.unpack(message["data"]))

    def _hang(self):
        pb_utils.Logger.log_warn(f"toy_tp rank {self.rank}: hanging on purpose (hang_rank)")
        while True:
            time.sleep(1)

    def _lead(self, x, params):
        x = np.ascontiguousarray(x, dtype=np.float32)
        time.sleep(float(params.get("delay_s", 0)))
        message = {"data": self.collective.pack(x), "hang_rank": params.get("hang_rank")}
        sends = [self.comm.isend(message, dest=peer, tag=WORK_TAG) for peer in range(1, self.world)]
        for request in sends:
            _wait(request)
        if message["hang_rank"] == 0:
            self._hang()
        return self._compute(x)

    def execute(self, requests):
        responses = []
        for request in requests:
            x = _input(request, "INPUT")
            total, contributors = self._lead(x, json.loads(request.parameters() or "{}"))
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        _output("OUTPUT", np.asarray(total, dtype=np.float32)),
                        _output("RANKS", np.array([contributors], dtype=np.int32)),
                    ]
                )
            )
        return responses

    def finalize(self):
        # Tell followers to stop, but never block: during a shutdown the
        # peers may already be gone, and a blocking send would hang the exit.
        if self.rank == 0:
            requests = [self.comm.isend(None, dest=peer, tag=WORK_TAG) for peer in range(1, self.world)]
            deadline = time.monotonic() + FINALIZE_WAIT_S
            while not all(r.test()[0] for r in requests) and time.monotonic() < deadline:
                time.sleep(POLL_INTERVAL_S)
        self.collective.close()
