"""CPU settings the installed commands apply first: glibc's ``malloc`` tuned, denormals flushed, and how
OpenMP's threads wait chosen from the load of the CPU.

:func:`tune_process` applies the first two; ``elan`` and ``basicsr`` call it before anything else, and
:func:`choose_wait_policy` for the commands that compute (see "OpenMP waiting" below).

Memory: keep freed memory in the process.

By default glibc serves blocks above 128 KiB (adapting up to 32 MiB) with ``mmap`` and returns
them to the system on every ``free``, and trims the heap top above 128 KiB. A CPU forward or
training step of ELAN allocates and frees tens of such tensors per layer, so every allocation
touches fresh pages (hundreds of thousands of page faults per few forwards of ELAN-light, a
tenth of the time or more: docs/performance.md, "Process tuning"). :func:`tune_malloc` raises both thresholds (as the
``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` environment variables would, but from
inside the process, so it works for the installed commands without a wrapper script). It does
nothing where the C library is not glibc.

Denormals: training ELAN on real images produces subnormal floats (below 1.2e-38) in its
tensors, which x86 CPUs process in microcode, many times slower than normal ones (a training step
of the demo option is measurably faster with them flushed, with the same losses to five digits:
docs/performance.md, "Process tuning"). :func:`flush_denormals` sets the
CPU's flush-to-zero / denormals-are-zero modes (``torch.set_flush_denormal``) before PyTorch starts
its thread pool, whose threads inherit them.
``ELAN_DENORMALS=keep`` in the environment keeps IEEE subnormals.

OpenMP waiting: between two parallel operations PyTorch's OpenMP threads spin for a while before they
sleep. On an idle CPU that is what makes small operations fast; with another job on the CPU the spinning
threads take the cores that the job, and their own team, need, and a training step of the demo option
ran many times slower (docs/performance.md has the measured figures). ``OMP_WAIT_POLICY=PASSIVE`` makes
them sleep at once: faster on a busy CPU, slower on an idle one. :func:`wait_policy_env` chooses it when
other work keeps more than a quarter of the CPU busy as a command starts (:func:`cpu_busy`); an
``OMP_WAIT_POLICY`` already in the environment always wins. The OpenMP runtime reads the variable once,
when it is loaded with torch, so the commands decide before they import torch (:func:`choose_wait_policy`,
with the load sampled from the moment the command started, :func:`load_sample`, so the sample costs little
start-up time); nothing restarts. The demo passes the same decision to its ``basicsr`` commands
(:mod:`elan_arch.demo.run`).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import sys
import time
from typing import Callable, Dict, List, Mapping, NamedTuple, Optional

#: ``mallopt`` parameters (glibc's malloc.h).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
#: The largest mmap threshold glibc accepts on 64-bit systems (``DEFAULT_MMAP_THRESHOLD_MAX``).
MMAP_THRESHOLD = 32 * 1024 * 1024
TRIM_THRESHOLD = 1024 * 1024 * 1024


def tune_malloc() -> bool:
    """Raise glibc's mmap and trim thresholds for this process; True if both were accepted."""
    if platform.system() != 'Linux' or platform.libc_ver()[0] != 'glibc':
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
    except OSError:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def flush_denormals() -> bool:
    """Flush subnormal floats to zero on the CPU (unless ``ELAN_DENORMALS=keep``); True if set."""
    if os.environ.get('ELAN_DENORMALS', '').lower() == 'keep':
        return False
    import torch

    return bool(torch.set_flush_denormal(True))


def tune_process() -> None:
    """:func:`tune_malloc` and :func:`flush_denormals`: what the installed commands call first."""
    tune_malloc()
    flush_denormals()


WAIT_POLICY = 'OMP_WAIT_POLICY'
#: Set once the load was looked at, so that the commands a command starts (the demo's) do not look again.
CHECKED = 'ELAN_WAIT_POLICY_CHECKED'


def _cpu_ticks() -> Optional[List[int]]:
    """The aggregate CPU line of ``/proc/stat`` (user, nice, system, idle, iowait, ...), None elsewhere."""
    try:
        with open('/proc/stat', encoding='ascii') as handle:
            return [int(v) for v in handle.readline().split()[1:]]
    except (OSError, ValueError):
        return None


class LoadSample(NamedTuple):
    """The CPU's tick counters (``/proc/stat``), this process's own CPU time and the clock, at one moment."""
    ticks: Optional[List[int]]
    own_seconds: float
    at: float


def load_sample(read_ticks: Callable[[], Optional[List[int]]] = _cpu_ticks) -> LoadSample:
    """A :class:`LoadSample` now (the commands take one as they start)."""
    times = os.times()
    return LoadSample(read_ticks(), times.user + times.system, time.monotonic())


def cpu_load(seconds: float = 0.5, read_ticks: Callable[[], Optional[List[int]]] = _cpu_ticks,
             since: Optional[LoadSample] = None) -> Optional[float]:
    """The share of the CPU (0-1, all cores) kept busy by other processes: from ``since`` (default: now) until
    at least ``seconds`` after it, this process's own CPU time taken out; elsewhere the 1-minute load average
    per core; None where neither is known."""
    before = since or load_sample(read_ticks)
    if before.ticks is None:
        if not hasattr(os, 'getloadavg'):
            return None
        return min(os.getloadavg()[0] / (os.cpu_count() or 1), 1.0)
    time.sleep(max(0.0, before.at + seconds - time.monotonic()))
    after = load_sample(read_ticks)
    delta = [b - a for a, b in zip(before.ticks, after.ticks or before.ticks)]
    total = sum(delta)
    idle = delta[3] + (delta[4] if len(delta) > 4 else 0)  # idle + iowait
    own = (after.own_seconds - before.own_seconds) * os.sysconf('SC_CLK_TCK') if since is not None else 0.0
    return max(0.0, total - idle - own) / total if total > 0 else 0.0


def cpu_busy(seconds: float = 0.5, threshold: float = 0.25,
             read_ticks: Callable[[], Optional[List[int]]] = _cpu_ticks, since: Optional[LoadSample] = None) -> bool:
    """Whether other work keeps more than ``threshold`` of the CPU busy (:func:`cpu_load`; unknown counts as
    busy)."""
    load = cpu_load(seconds, read_ticks, since)
    return True if load is None else load > threshold


def wait_policy_env(environ: Mapping[str, str], busy: Optional[Callable[[], bool]] = None) -> Dict[str, str]:
    """A copy of ``environ`` with ``OMP_WAIT_POLICY=PASSIVE`` if the CPU is busy now (``busy``, default
    :func:`cpu_busy`), marked as decided (:data:`CHECKED`). Unchanged when a policy is already set or was
    decided, or when OpenMP runs one thread (``OMP_NUM_THREADS=1``, a single core): nothing waits then."""
    env = dict(environ)
    if WAIT_POLICY in env or CHECKED in env or env.get('OMP_NUM_THREADS') == '1' or (os.cpu_count() or 1) < 2:
        return env
    env[CHECKED] = '1'
    if (busy or cpu_busy)():
        env[WAIT_POLICY] = 'PASSIVE'
    return env


#: How long after a command starts its load sample ends (see :func:`choose_wait_policy`).
COMMAND_SAMPLE_SECONDS = 0.25


def choose_wait_policy(prog: str, since: Optional[LoadSample] = None) -> Optional[str]:
    """For a command that computes (``basicsr train``, ``elan upscale``, ...), as it starts and before it
    imports torch: the policy of :func:`wait_policy_env` put into ``os.environ``, the load sampled from
    ``since`` (the command's start) for :data:`COMMAND_SAMPLE_SECONDS`. Said on stderr when passive.
    Where torch (and so OpenMP) is loaded already, nothing can change: a busy CPU gets a line of advice.
    Returns the policy chosen (None: OpenMP's default, or the user's)."""
    env = wait_policy_env(os.environ, lambda: cpu_busy(COMMAND_SAMPLE_SECONDS, since=since))
    chosen = env.get(WAIT_POLICY) if WAIT_POLICY not in os.environ else None
    if chosen is not None and 'torch' in sys.modules:  # its OpenMP runtime has read the environment already
        _say(f'{prog}: other work keeps the CPU busy: if this runs slowly, start it with OMP_WAIT_POLICY=PASSIVE '
             '(docs/performance.md)')
        return None
    os.environ.update(env)
    if chosen is not None:
        _say(f'{prog}: other work keeps the CPU busy, so OpenMP threads wait passively (OMP_WAIT_POLICY=PASSIVE, '
             'faster on a shared CPU; set OMP_WAIT_POLICY yourself to choose)')
    return chosen


def _say(message: str) -> None:
    """A line on stderr, stdout flushed first; a broken console is not an error here."""
    for stream, text in ((sys.stdout, ''), (sys.stderr, message + '\n')):
        try:
            stream.write(text)
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass


#: CPU flags (``/proc/cpuinfo``) that mean native bfloat16 arithmetic oneDNN uses (what ``--bf16`` needs).
BF16_FLAGS = ('avx512_bf16', 'amx_bf16')


def cpu_flags() -> Optional[set]:
    """The CPU's feature flags from ``/proc/cpuinfo``, or None where that cannot be read (not Linux)."""
    try:
        with open('/proc/cpuinfo') as info:
            for line in info:
                if line.startswith('flags'):
                    return set(line.split(':', 1)[1].split())
    except OSError:
        return None
    return set()


def bf16_unsupported_reason() -> Optional[str]:
    """Why bfloat16 inference on this CPU is refused, or None where it has native bfloat16 arithmetic."""
    flags = cpu_flags()
    if flags is None:
        return 'cannot read the CPU\'s flags (/proc/cpuinfo) to check for native bfloat16 (avx512_bf16, amx_bf16)'
    if not flags.intersection(BF16_FLAGS):
        return ('this CPU has no native bfloat16 arithmetic (neither avx512_bf16 nor amx_bf16 in /proc/cpuinfo), '
                'so bfloat16 would be emulated, slower than float32')
    import torch

    if not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
        return 'this PyTorch build has no oneDNN bfloat16 support'
    return None


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` knows."""
    try:
        with open('/proc/cpuinfo') as info:
            for line in info:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
