"""The loop of a tensor-parallel rank other than 0: build this rank's slice of the model, then
run every step rank 0 broadcasts, until told to stop or rank 0 goes away.

Ranks other than 0 return nothing per step: their share of each collective is their output,
and rank 0 (in the engine process) holds the gathered logits the sampler reads. The same
function runs in a local process (`mp` backend) and in a Ray actor (`ray` backend).
"""

from __future__ import annotations

import dataclasses
import logging
import pickle
import signal
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Client, Connection
from typing import Any

import torch

from mono_llm.core.config import EngineConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Rendezvous:
    """Where the ranks of one engine meet: rank 0's TCP store (process group) and its control
    listener (step broadcast), with the key that authenticates the control connection."""

    store_host: str
    store_port: int
    control_address: tuple[str, int]
    authkey: bytes
    backend: str  # nccl | gloo
    size: int


def rank_config(config: EngineConfig, rank: int) -> EngineConfig:
    """The engine config as rank `rank` runs it: its own device; no decode speculation on
    ranks > 0 (it keys on the engine's live block-table lists, which a broadcast copies)."""
    parallel = config.parallel_config
    device = config.device
    if torch.device(device).type == "cuda":
        device = f"cuda:{parallel.first_device + rank}"
    return dataclasses.replace(
        config, device=device, overlap_decode_prepare=config.overlap_decode_prepare and rank == 0
    )


def build_rank_runner(config: EngineConfig, rank: int, rendezvous: Rendezvous) -> Any:
    """Join the group and load this rank's slice of the model (a `ModelRunner`)."""
    from mono_llm.core.distributed.group import TensorParallelGroup
    from mono_llm.core.worker.model_runner import ModelRunner

    config = rank_config(config, rank)
    if torch.device(config.device).type == "cuda":
        torch.cuda.set_device(torch.device(config.device))
    group = TensorParallelGroup.connect(
        rendezvous.store_host,
        rendezvous.store_port,
        rank,
        rendezvous.size,
        rendezvous.backend,
    )
    return ModelRunner(config, tp=group)


def run_worker(rank: int, config: EngineConfig, rendezvous: Rendezvous) -> None:
    """Entry point of rank `rank` (> 0)."""
    logging.basicConfig(level=logging.WARNING)
    # Ctrl-C reaches the whole process group; rank 0 decides when workers stop (a "shutdown"
    # message, or its connection closing when it exits).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    conn: Connection = Client(rendezvous.control_address, authkey=rendezvous.authkey)
    conn.send(rank)
    try:
        runner = build_rank_runner(config, rank, rendezvous)
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        conn.close()
        raise
    conn.send(("ready", runner.num_blocks))
    serve_steps(runner, conn)


def serve_steps(runner: Any, conn: Connection) -> None:
    """Run each broadcast step until "shutdown" or a closed connection."""
    while True:
        try:
            message = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):
            break  # rank 0 is gone
        kind = message[0]
        if kind == "execute":
            runner.execute(message[1])
        elif kind == "shutdown":
            break
        else:
            logger.error("rank worker: unknown message %r", kind)
    conn.close()
