"""train.py --devices N: the processes of a data-parallel run, and which one of them writes.

JAX drives all N devices from this one process (its CPU device count is set before JAX
starts: :func:`~xpmlp.backend.prepare_devices`). torch runs one process per device:
train.py starts N − 1 more copies of itself with the same arguments (or ``torchrun``
starts all N); they meet at a file in a temporary folder and train in lockstep. Rank 0
alone holds the run's lock, writes its files and prints; the others only train.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field

from ..backend import get_backend

#: What a helper process is told: its rank, and where the group meets.
RANK_ENV, RENDEZVOUS_ENV = "XPMLP_RANK", "XPMLP_RENDEZVOUS"
#: Seconds the processes wait for each other (to meet, and in each all-reduce).
TIMEOUT = 120


@dataclass
class Group:
    """This process's place in the run: ``rank`` 0 writes; ``helpers`` are the processes rank 0 started."""

    rank: int = 0
    helpers: list[subprocess.Popen] = field(default_factory=list)


@contextlib.contextmanager
def processes(backend: str, device: str, devices: int, argv: list[str]) -> Iterator[Group]:
    """The run's processes while the block runs: on torch with ``devices`` > 1, its group (joined, then left)."""
    if devices == 1 or not get_backend(backend, device).process_per_device:
        yield Group()
        return
    from ..backend.torch import join_group, leave_group

    if RANK_ENV in os.environ:  # a helper that rank 0 started
        rank = int(os.environ[RANK_ENV])
        join_group(devices, rank, os.environ[RENDEZVOUS_ENV], device, TIMEOUT)
        group, folder = Group(rank), None
    elif "RANK" in os.environ and "WORLD_SIZE" in os.environ:  # torchrun started every process
        rank = int(os.environ["RANK"])
        join_group(devices, rank, None, device, TIMEOUT)
        group, folder = Group(rank), None
    else:
        folder = tempfile.mkdtemp(prefix="xpmlp-devices-")
        group = Group(0, [_helper(rank, folder, argv) for rank in range(1, devices)])
        join_group(devices, 0, os.path.join(folder, "rendezvous"), device, TIMEOUT)
    try:
        yield group
    finally:
        leave_group()
        for helper in group.helpers:  # done (they leave with rank 0), or stranded by an error: not left behind
            try:
                helper.wait(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                helper.kill()
                helper.wait()
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


def _helper(rank: int, folder: str, argv: list[str]) -> subprocess.Popen:
    """train.py again, as process ``rank`` of the group meeting in ``folder``; it prints nothing."""
    env = dict(os.environ, **{RANK_ENV: str(rank), RENDEZVOUS_ENV: os.path.join(folder, "rendezvous")})
    quiet = subprocess.DEVNULL  # rank 0 reports for the run (a helper that fails ends its all-reduces)
    return subprocess.Popen([sys.executable, "-m", "xpmlp", "train", *argv], env=env, stdout=quiet, stderr=quiet)
