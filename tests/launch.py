"""The launcher of the data-parallel tests: ``fn`` run in two gloo processes started by the
test, each rank's result returned to it."""

from __future__ import annotations

import datetime
import os
import time
import uuid

import pyro
import pytest
import torch
import torch.distributed as distributed
import torch.multiprocessing as mp

TIMEOUT = 120  # seconds for a whole two-process run, start-up included

#: skip a module's tests where torch has no distributed package
requires_distributed = pytest.mark.skipif(not distributed.is_available(),
                                          reason="torch.distributed is not available")


def _entry(rank, fn, world_size, directory, args, rendezvous):
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    distributed.init_process_group(
        "gloo", init_method=f"file://{rendezvous}", rank=rank,
        world_size=world_size, timeout=datetime.timedelta(seconds=60))
    pyro.clear_param_store()
    pyro.set_rng_seed(100 + rank)
    try:
        result = fn(rank, world_size, *args)
    except Exception as error:  # reported to the test, which checks every rank's error
        result = {"error": f"{type(error).__name__}: {error}"}
    torch.save(result, os.path.join(directory, f"rank{rank}.pt"))
    # every rank done with its collectives before any tears the group down: a rank that
    # leaves while a peer still reads from it makes gloo abort that peer
    distributed.barrier()
    distributed.destroy_process_group()
    # leave without the interpreter's teardown: gloo's threads met static destructors there
    # and aborted a rank whose work was done and saved ("terminate called without an active
    # exception", SIGABRT, 1 run in about 5)
    os._exit(0)


def launch(fn, tmp_path, *args, world_size=2):
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` gloo processes; their results."""
    # a fresh rendezvous file per run: the ranks leave without the teardown that removes it
    rendezvous = os.path.join(str(tmp_path), f"rendezvous-{uuid.uuid4().hex}")
    context = mp.start_processes(_entry, args=(fn, world_size, str(tmp_path), args, rendezvous),
                                 nprocs=world_size, join=False, start_method="spawn")
    deadline = time.monotonic() + TIMEOUT
    while not context.join(timeout=max(deadline - time.monotonic(), 0.1)):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the {world_size}-process run hung for more than {TIMEOUT} s")
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(world_size)]
