"""CPU settings the installed commands apply first: glibc's ``malloc`` tuned, denormals flushed.

:func:`tune_process` applies both; ``elan`` and ``basicsr`` call it before anything else.

Memory: keep freed memory in the process.

By default glibc serves blocks above 128 KiB (adapting up to 32 MiB) with ``mmap`` and returns
them to the system on every ``free``, and trims the heap top above 128 KiB. A CPU forward or
training step of ELAN allocates and frees tens of such tensors per layer, so every allocation
touches fresh pages: measured on the 2-core CPU, about 800k page faults per five forwards of
ELAN-light, and 12-15% of the time. :func:`tune_malloc` raises both thresholds (as the
``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` environment variables would, but from
inside the process, so it works for the installed commands without a wrapper script). It does
nothing where the C library is not glibc.

Denormals: training ELAN on real images produces subnormal floats (below 1.2e-38) in its
tensors, which x86 CPUs process in microcode, many times slower than normal ones. Measured on the
2-core CPU, ``basicsr train`` of the demo option: 0.93 s per iteration, 0.73 s with subnormals
flushed to zero (the losses printed were the same to five digits). :func:`flush_denormals` sets the
CPU's flush-to-zero / denormals-are-zero modes (``torch.set_flush_denormal``) before PyTorch starts
its thread pool, whose threads inherit them.
``ELAN_DENORMALS=keep`` in the environment keeps IEEE subnormals.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

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
