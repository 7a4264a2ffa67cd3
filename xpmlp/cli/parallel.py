"""train.py --devices N: the processes of a data-parallel run, and which one of them writes.

JAX drives all N devices from this one process (its CPU device count is set before JAX
starts: :func:`~xpmlp.backend.prepare_devices`), or, with ``--processes P``, from P
processes of N/P devices each: train.py then only launches them (:func:`launch`), and
they meet at a free localhost port (``jax.distributed``, gloo). torch runs one process
per device: train.py starts N − 1 more copies of itself with the same arguments (or
``torchrun`` starts all N); they meet at a file in a temporary folder and train in
lockstep. Rank 0 alone holds the run's lock, writes its files and prints; the others
only train.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO

from ..backend import get_backend, prepare_devices

#: What a helper process is told: its rank, and where the group meets (a file for torch, host:port for JAX).
RANK_ENV, RENDEZVOUS_ENV, COORDINATOR_ENV = "XPMLP_RANK", "XPMLP_RENDEZVOUS", "XPMLP_COORDINATOR"
#: Seconds the processes wait for each other (to meet, and in each all-reduce; JAX: for a silent process).
TIMEOUT = 120
#: Seconds the other JAX processes get to end by themselves once one has failed (rank 0 says what was saved).
GRACE = 20
#: Seconds rank 0 gets after a Ctrl-C (a terminal's reaches every process) to end by itself, saying so, before
#: it and the others are terminated (a SIGTERM then could end it as it exits, its line said: then two lines).
SETTLE = 2
#: This process's rank among JAX's processes, once it has joined them (:func:`prepare`).
_joined: int | None = None


@dataclass
class Group:
    """This process's place in the run: ``rank`` 0 writes; ``helpers`` are the processes rank 0 started."""

    rank: int = 0
    helpers: list[subprocess.Popen] = field(default_factory=list)


@contextlib.contextmanager
def processes(backend: str, device: str, devices: int, argv: list[str]) -> Iterator[Group]:
    """The run's processes while the block runs: on torch with ``devices`` > 1, its group (joined, then left);
    in a JAX process that :func:`launch` started, its rank."""
    if _joined is not None:
        yield Group(_joined)
        return
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


def prepare(backend: str | None, devices: int, processes: int) -> None:
    """What the run needs before its backend starts: JAX's CPU devices (:func:`~xpmlp.backend.prepare_devices`);
    in a process that :func:`launch` started, its place among the others (``jax.distributed``)."""
    global _joined
    if processes == 1 or COORDINATOR_ENV not in os.environ:
        prepare_devices(backend, devices)  # (the launcher too: it checks the flags as one process of N devices)
        return
    from ..backend.jax import join_processes

    rank = int(os.environ[RANK_ENV])
    join_processes(os.environ[COORDINATOR_ENV], processes, rank, devices // processes, TIMEOUT)
    _joined = rank


def launches(processes: int) -> bool:
    """Whether this train.py launches ``processes`` JAX processes rather than training itself."""
    return processes > 1 and COORDINATOR_ENV not in os.environ


def leave(status: int | str | None) -> None:
    """End a JAX process of several that fails at once with ``status``, skipping JAX's shutdown (a barrier
    that would wait for the others, lost or stopped); elsewhere, return."""
    if _joined is not None and status not in (0, None):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status if isinstance(status, int) else 1)


def launch(argv: list[str], processes: int, prog: str) -> int:
    """train.py ``argv`` as ``processes`` JAX processes meeting at a free localhost port; their exit status.

    Rank 0 prints (JAX's gloo lines aside) and writes; the others are silent. When one fails,
    rank 0 has :data:`GRACE` seconds to end by itself (saying what it saved), then every
    process left is killed; if rank 0 said nothing, one line says which process ended. A Ctrl-C
    (or SIGTERM) that ends rank 0 as it starts, before it can say so, is raised as KeyboardInterrupt.
    """
    with socket.socket() as probe:  # a port no one holds now (the kernel's choice); rank 0 listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code = "import sys; from xpmlp.cli import main; sys.exit(main(sys.argv[2:], sys.argv[1]))"
    children: list[subprocess.Popen] = []
    relay = None
    try:  # a Ctrl-C as they start (raised on) ends those started too
        for rank in range(processes):
            env = dict(os.environ, **{RANK_ENV: str(rank), COORDINATOR_ENV: f"127.0.0.1:{port}"})
            out, err = (subprocess.DEVNULL, subprocess.DEVNULL) if rank else (subprocess.PIPE, None)
            children.append(
                subprocess.Popen([sys.executable, "-c", code, prog, *argv], env=env, stdout=out, stderr=err, text=True)
            )
        relay = threading.Thread(target=_relay, args=(children[0].stdout,), daemon=True)
        relay.start()
        status, failed = _watch(children)
    finally:
        for child in children:  # ended, or stranded by another's failure: not left behind
            if child.poll() is None:
                child.kill()
            child.wait()
        if relay is not None:
            relay.join(timeout=5)
    if failed is not None and (children[0].returncode or 0) <= 0:  # rank 0 said nothing
        how = f"process {failed} of {processes} {_how(children[failed])}"
        print(f"{prog}: error: data-parallel training stopped: {how}; rerun with --resume to continue from the "
              "last epoch saved", file=sys.stderr)  # fmt: skip
    return status


def _watch(children: list[subprocess.Popen]) -> tuple[int, int | None]:
    """Wait for the run's processes: (its exit status, the rank that failed first, or None)."""
    first = children[0]
    try:
        while first.poll() is None:
            failed = next((rank for rank, child in enumerate(children) if child.poll()), None)
            if failed is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    first.wait(timeout=GRACE)  # its next all-reduce fails: it says what was saved
                return max(first.returncode or 1, 1), failed
            time.sleep(0.1)
    except KeyboardInterrupt:  # Ctrl-C reached every process, SIGTERM this one: rank 0 says what was saved
        with contextlib.suppress(subprocess.TimeoutExpired):
            first.wait(timeout=SETTLE)
        for child in children:
            if child.poll() is None:
                child.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            first.wait(timeout=GRACE)
        if (first.returncode or 0) < 0:  # killed as it started, before its own Ctrl-C guard: it said nothing
            raise
        return max(first.returncode or 130, 1), None
    if first.returncode:
        return max(first.returncode, 1), 0 if first.returncode < 0 else None
    for child in children[1:]:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=TIMEOUT)
    failed = next((rank for rank, child in enumerate(children) if child.returncode), None)
    return (0 if failed is None else 1), failed


def _how(child: subprocess.Popen) -> str:
    """How a process ended: ``exited with status 3``, ``was killed (SIGKILL)``."""
    code = child.returncode
    return f"was killed ({signal.Signals(-code).name})" if code < 0 else f"exited with status {code}"


def _relay(stream: IO[str]) -> None:
    """Rank 0's output to this process's, without the lines gloo prints when it connects."""
    for line in stream:
        if not line.startswith("[Gloo] "):
            sys.stdout.write(line)
            sys.stdout.flush()
