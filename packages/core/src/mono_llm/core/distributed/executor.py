"""What `EngineCore` runs model steps through.

With one device the executor is the `ModelRunner` itself, in the engine process (as before
tensor parallelism existed: no indirection on the hot path). With `tensor_parallel_size` N,
`MultiprocExecutor` presents the same interface (`execute`, `num_blocks`, `vocab_size`,
`device`, ...) over N ranks: rank 0 runs in the engine process, so the gathered logits land
where the sampler is without a copy, and ranks 1..N-1 run in worker processes (or Ray
actors). The scheduler runs once, in the engine; each step's `ModelBatch` is pickled once and
written to every worker's control connection before rank 0 starts its own forward pass, so
the workers' host preparation overlaps rank 0's.
"""

from __future__ import annotations

import logging
import multiprocessing
import pickle
import secrets
import weakref
from multiprocessing.connection import Connection, Listener
from typing import Any

import torch

from mono_llm.core.config import EngineConfig
from mono_llm.core.distributed.group import make_store
from mono_llm.core.distributed.worker import (
    Rendezvous,
    build_rank_runner,
    rank_config,
    run_worker,
)
from mono_llm.core.errors import EngineError
from mono_llm.core.worker.batch import ModelBatch

logger = logging.getLogger(__name__)

# How long rank 0 waits for a worker to connect and, later, to report its model loaded.
_CONNECT_TIMEOUT_S = 300.0


def make_executor(config: EngineConfig) -> Any:
    """The model runner for one device, a `MultiprocExecutor` for several."""
    if config.parallel_config.tensor_parallel_size == 1:
        from mono_llm.core.worker.model_runner import ModelRunner

        if config.parallel_config.first_device and torch.device(config.device).type == "cuda":
            config = rank_config(config, 0)  # a data-parallel replica's own GPU
            torch.cuda.set_device(torch.device(config.device))
        return ModelRunner(config)
    return MultiprocExecutor(config)


class MultiprocExecutor:
    """Rank 0 in this process, ranks 1..N-1 in worker processes or Ray actors."""

    def __init__(self, config: EngineConfig) -> None:
        parallel = config.parallel_config
        size = parallel.tensor_parallel_size
        backend = "nccl" if torch.device(config.device).type == "cuda" else "gloo"
        host = "127.0.0.1"
        self._store = make_store(host, size)
        authkey = secrets.token_bytes(16)
        listener = Listener((host, 0), authkey=authkey)
        rendezvous = Rendezvous(
            store_host=host,
            store_port=self._store.port,
            control_address=listener.address,
            authkey=authkey,
            backend=backend,
            size=size,
        )
        self._launcher = _launch_workers(config, rendezvous)
        self._conns: list[Connection] = []
        try:
            self._conns = _accept(listener, size - 1)
            self.driver = build_rank_runner(config, 0, rendezvous)
            for conn in self._conns:
                _wait_ready(conn)
        except BaseException:
            _stop(self._conns, self._launcher)
            raise
        finally:
            listener.close()
        self._finalizer = weakref.finalize(self, _stop, self._conns, self._launcher)
        self.model = self.driver.model
        self.vocab_size: int = self.driver.vocab_size
        self.hidden_size: int = self.driver.hidden_size
        self.num_blocks: int = self.driver.num_blocks
        self.block_size: int = self.driver.block_size
        self.device: torch.device = self.driver.device
        self.dtype: torch.dtype = self.driver.dtype
        self.tensor_parallel_size = size

    def execute(self, batch: ModelBatch) -> torch.Tensor:
        """Broadcast the step, run rank 0's share; float32 logits [rows, vocab] on rank 0."""
        message = pickle.dumps(("execute", batch), protocol=pickle.HIGHEST_PROTOCOL)
        try:
            for conn in self._conns:
                conn.send_bytes(message)
        except OSError as exc:
            raise EngineError(f"a tensor-parallel worker is gone: {exc}") from exc
        return self.driver.execute(batch)

    def shutdown(self) -> None:
        """Stop the workers (also done when the executor is garbage-collected)."""
        self._finalizer()


def _accept(listener: Listener, count: int) -> list[Connection]:
    """The workers' control connections, ordered by rank."""
    listener._listener._socket.settimeout(_CONNECT_TIMEOUT_S)  # type: ignore[attr-defined]
    by_rank: dict[int, Connection] = {}
    for _ in range(count):
        try:
            conn = listener.accept()
        except TimeoutError as exc:
            raise EngineError(
                f"tensor-parallel workers did not connect within {_CONNECT_TIMEOUT_S:.0f} s"
            ) from exc
        by_rank[int(conn.recv())] = conn
    return [by_rank[rank] for rank in sorted(by_rank)]


def _wait_ready(conn: Connection) -> None:
    if not conn.poll(_CONNECT_TIMEOUT_S):
        raise EngineError("a tensor-parallel worker did not finish loading the model")
    status, detail = conn.recv()
    if status != "ready":
        raise EngineError(f"a tensor-parallel worker failed to start:\n{detail}")


class _ProcessLauncher:
    """Ranks 1..N-1 as local processes (spawned: CUDA cannot be forked)."""

    def __init__(self, config: EngineConfig, rendezvous: Rendezvous) -> None:
        context = multiprocessing.get_context("spawn")
        self.processes = [
            context.Process(
                target=run_worker,
                args=(rank, config, rendezvous),
                name=f"mono-llm-tp-rank-{rank}",
                daemon=True,
            )
            for rank in range(1, rendezvous.size)
        ]
        for process in self.processes:
            process.start()

    def stop(self, timeout: float = 10.0) -> None:
        for process in self.processes:
            process.join(timeout)
            if process.is_alive():
                process.terminate()
                process.join(timeout)


def _launch_workers(config: EngineConfig, rendezvous: Rendezvous) -> Any:
    if config.parallel_config.distributed_executor_backend == "ray":
        from mono_llm.core.distributed.ray_launcher import RayLauncher

        return RayLauncher(config, rendezvous)
    return _ProcessLauncher(config, rendezvous)


def _stop(conns: list[Connection], launcher: Any) -> None:
    message = pickle.dumps(("shutdown",))
    for conn in conns:
        try:
            conn.send_bytes(message)
            conn.close()
        except OSError:
            pass
    launcher.stop()
