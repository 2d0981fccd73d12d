"""Shared machinery of the preparation commands: parallel per-image work with a progress bar, and the summary."""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, List, Sequence, TypeVar

from tqdm import tqdm

from elan_arch.utils.errors import ElanError

T = TypeVar('T')
R = TypeVar('R')


def _init_worker() -> None:
    """One thread per worker process: the parallelism comes from the processes."""
    import cv2
    import torch

    cv2.setNumThreads(1)
    torch.set_num_threads(1)


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Ignore Ctrl-C while the pool starts: the workers inherit that, so only this process handles it
    (and terminates the pool), and no Ctrl-C can land between forking the workers and owning the pool."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def check_workers(workers: int) -> int:
    if workers < 1:
        raise ElanError(f'--workers must be at least 1 (got {workers})')
    return workers


def parallel_map(func: Callable[[T], R], items: Sequence[T], workers: int, desc: str,
                 progress: bool = True) -> Iterator[R]:
    """Yield ``func(item)`` for every item (in completion order), in ``workers`` processes.

    ``func`` must be a picklable module-level callable. One tqdm bar (``desc``, one tick per item)
    shows progress. An exception in a worker is re-raised here; closing the generator early
    terminates the pool.
    """
    bar = tqdm(total=len(items), desc=desc, unit='img', disable=not progress, dynamic_ncols=True)
    try:
        if check_workers(workers) == 1 or len(items) <= 1:
            for item in items:
                yield func(item)
                bar.update()
            return
        # spawn, not fork: forking a process whose torch/OpenMP thread pools already ran deadlocks the
        # children as soon as they run torch (imresize); fresh interpreters cost an import, never a hang
        ctx = multiprocessing.get_context('spawn')
        with _sigint_ignored():
            pool = ctx.Pool(min(workers, len(items)), initializer=_init_worker)
        with pool:
            for result in pool.imap_unordered(func, items):
                yield result
                bar.update()
    finally:
        bar.close()


def tree_bytes(path: Path) -> int:
    """Total size of the files under ``path`` (or of the file ``path``)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob('*') if p.is_file())


@dataclass
class PrepareSummary:
    """What a preparation run did: source images, crops per dataset (sub-images, or mod-cropped test images),
    bytes, seconds."""

    images: int = 0
    crops: int = 0
    bytes: int = 0
    seconds: float = 0.
    outputs: List[str] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float('inf')

    def add(self, other: 'PrepareSummary') -> 'PrepareSummary':
        """Accumulate ``other`` into this summary (seconds add up); return self."""
        self.images += other.images
        self.crops += other.crops
        self.bytes += other.bytes
        self.seconds += other.seconds
        self.outputs += other.outputs
        self.skipped += other.skipped
        return self

    def __str__(self) -> str:
        lines = [f'{self.images} images -> {self.crops} crops, {self.bytes / 2**20:.1f} MiB written in '
                 f'{self.seconds:.1f} s ({self.images_per_second:.2f} images/s)']
        lines += [f'  wrote {out}' for out in self.outputs]
        lines += [f'  skipped {why}' for why in self.skipped]
        return os.linesep.join(lines)
