"""Distributed start-up that survives torchrun's elastic restarts, and the command that resumes a run.

torchrun (c10d or static rendezvous) hands its workers a TCPStore that its agent hosts
(``TORCHELASTIC_USE_AGENT_STORE=True``) and keeps across restarts of the worker group. The process
group's keys in it (gloo's and NCCL's peer addresses) are the same in every attempt, so the workers
of a restarted group can read the addresses of the previous, dead attempt: gloo then fails with
"Connection refused" or waits in connect for its 30-minute timeout (pytorch/pytorch#135712: the
``TORCHELASTIC_RESTART_COUNT`` that PyTorch would isolate attempts with differs between nodes).

:func:`init_process_group` therefore never builds the process group in the agent's store. Rank 0
starts a store of its own on a free port and posts ``host port token`` in the agent's store; the
other ranks take that post only once the store it names answers with the same token. A post left by
a previous attempt names a store that died with its rank 0, so no rank can join a dead attempt. All
ranks then meet in the fresh store within a start-up deadline (``ELAN_DIST_START_TIMEOUT`` seconds,
default 120): a peer that never arrives ends the start with an error (and torchrun restarts the
group) instead of a hang. Without the agent's store (Slurm, ``torch.distributed.launch``,
``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``) rank 0 hosts the store at ``MASTER_ADDR:MASTER_PORT``
already, and only the deadline applies.

Whether any rank of the group is a restart (``TORCHELASTIC_RESTART_COUNT > 0``, which differs
between nodes) is agreed on at start-up: :func:`group_restarted`.
"""
from __future__ import annotations

import os
import shlex
import socket
import time
import uuid
from datetime import timedelta
from typing import Dict, List, Optional

import torch.distributed as dist

from elan_arch.utils.errors import ElanError

START_TIMEOUT_VAR = 'ELAN_DIST_START_TIMEOUT'
DEFAULT_START_TIMEOUT = 120.0
_GROUP: Dict[str, bool] = {'restarted': False}


def start_timeout() -> float:
    """Seconds all ranks have to meet at start-up (``ELAN_DIST_START_TIMEOUT``, default 120)."""
    value = os.environ.get(START_TIMEOUT_VAR, str(DEFAULT_START_TIMEOUT))
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if seconds <= 0:
        raise ElanError(f'{START_TIMEOUT_VAR}={value!r}: expected a positive number of seconds')
    return seconds


def _remaining(deadline: float, what: str) -> timedelta:
    """Time left until ``deadline`` (``time.monotonic()``); ``TimeoutError(what)`` when there is none."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError(what)
    return timedelta(seconds=left)


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def fresh_store(board: dist.Store, rank: int, world_size: int, deadline: float) -> dist.Store:
    """A store that only this attempt's ranks use: hosted by rank 0, announced through ``board`` (the agent's
    store) as ``host port token``; other ranks wait (until ``deadline``, a ``time.monotonic()``) for a post
    whose store answers with its token."""
    board = dist.PrefixStore('elan_arch/group_store', board)
    host = os.environ['MASTER_ADDR']
    if rank == 0:
        store = dist.TCPStore(host, 0, world_size, is_master=True, wait_for_workers=False,
                              timeout=_remaining(deadline, 'rank 0 could not start its store'))
        token = uuid.uuid4().hex
        store.set('token', token)
        board.set('endpoint', f'{host} {store.port} {token}')
        return store
    while True:
        board.wait(['endpoint'], _remaining(deadline, "rank 0 did not announce its store"))
        post_host, post_port, token = board.get('endpoint').decode().split()
        if _answers(post_host, int(post_port)):
            store = dist.TCPStore(post_host, int(post_port), world_size, is_master=False,
                                  timeout=_remaining(deadline, "rank 0's store did not answer"))
            if store.check(['token']) and store.get('token').decode() == token:
                return store
        time.sleep(0.2)  # a post of a previous attempt: its store is gone; wait for this attempt's


def meet(store: dist.Store, world_size: int, deadline: float, restarts: int) -> bool:
    """Wait until all ranks have arrived in ``store`` (each with its ``TORCHELASTIC_RESTART_COUNT``,
    ``restarts``); whether any of them is a restart."""
    start = dist.PrefixStore('elan_arch/start', store)
    start.add('restarts', restarts)
    if start.add('arrived', 1) == world_size:  # the last to arrive opens the door
        start.set('all_arrived', '1')
    try:
        start.wait(['all_arrived'], _remaining(deadline, 'no time left'))
    except dist.DistError as err:
        raise TimeoutError(f'only {start.add("arrived", 0)} of {world_size} processes arrived') from err
    return start.add('restarts', 0) > 0


def init_process_group(backend: str) -> None:
    """``torch.distributed.init_process_group(backend)`` from torchrun's/Slurm's environment, in a store
    of this attempt only, with start-up bounded by :func:`start_timeout` (see the module docstring)."""
    rank, world_size = int(os.environ['RANK']), int(os.environ['WORLD_SIZE'])
    deadline = time.monotonic() + start_timeout()
    try:
        store, _, _ = next(dist.rendezvous('env://', rank, world_size,
                                           timeout=_remaining(deadline, 'the launcher store did not answer')))
        if os.environ.get('TORCHELASTIC_USE_AGENT_STORE') == str(True):
            store = fresh_store(store, rank, world_size, deadline)
        restarts = int(os.environ.get('TORCHELASTIC_RESTART_COUNT', '0'))
        _GROUP['restarted'] = meet(store, world_size, deadline, restarts)
    except (dist.DistError, TimeoutError) as err:  # a store or a peer that did not answer in time
        raise ElanError(f'distributed start-up of rank {rank} of {world_size} failed within {start_timeout():.0f} s '
                        f'({START_TIMEOUT_VAR}): {str(err).splitlines()[0]}; a peer process died or is stuck (its '
                        f'log says why), was started too late, or MASTER_ADDR:MASTER_PORT ({os.environ["MASTER_ADDR"]}:'
                        f'{os.environ["MASTER_PORT"]}) is not reachable') from err
    dist.init_process_group(backend, store=dist.PrefixStore('elan_arch/pg', store), rank=rank,
                            world_size=world_size)


def group_restarted() -> bool:
    """Whether this process group is a torchrun restart of a failed one (on any of its nodes)."""
    return _GROUP['restarted']


def as_typed(parts: List[str]) -> List[str]:
    """A command line as a user types it: ``/usr/bin/python3 /usr/local/bin/torchrun ARGS`` -> ``torchrun ARGS``."""
    if len(parts) > 1 and os.path.basename(parts[1]) == 'torchrun':
        parts = parts[1:]
    if parts and os.path.basename(parts[0]) == 'torchrun':
        parts = ['torchrun', *parts[1:]]
    return parts


def _parent_command() -> Optional[List[str]]:
    """The command line of the parent process (torchrun's agent for its workers), where /proc has it."""
    try:
        with open(f'/proc/{os.getppid()}/cmdline', 'rb') as handle:
            parts = [part.decode() for part in handle.read().split(b'\0') if part]
    except (OSError, UnicodeDecodeError):
        return None
    return as_typed(parts) or None


def resume_command(argv: List[str], launcher: str) -> str:
    """The command that continues this run: the one running (``argv`` = this command's options) with
    ``--auto_resume``. Under torchrun it is torchrun's own command line; under Slurm an ``srun`` line."""
    if 'TORCHELASTIC_RUN_ID' in os.environ:
        command = _parent_command() or [
            'torchrun', f'--nnodes={os.environ.get("GROUP_WORLD_SIZE", "1")}',
            f'--nproc_per_node={os.environ.get("LOCAL_WORLD_SIZE", "1")}', '-m', 'elan_arch.cli.basicsr_cmd', *argv]
    elif launcher == 'slurm':
        command = ['srun', 'basicsr', *argv]
    else:
        command = ['basicsr', *argv]
    if '--auto_resume' not in command:
        command.append('--auto_resume')
    return shlex.join(command)


def is_main_process() -> bool:
    """Rank 0, or the only process."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0

