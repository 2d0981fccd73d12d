"""Upscaling a folder as a pipeline: while the network runs on one image, the next image is decoded and
the finished ones are encoded and written, in background threads.

PNG encoding of a 4x output takes longer than ELAN-light computes it on a GPU, and decoding is not free
either: done in turn, the device would wait for them between images. OpenCV's decoders and encoders and
PyTorch's operators release the GIL, so threads overlap them. Memory stays bounded: one image is read
ahead, and at most ``writers`` finished outputs wait for their writer besides the one being computed.

:func:`run_pipeline` knows nothing of images: it takes the three stages as functions, so the command
(:mod:`elan_arch.cli.upscale_cmd`) and the tests share it. A stage raising :class:`ElanError` fails
that job only (reported, the others go on); any other exception stops the run.
"""
from __future__ import annotations

import os
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Generic, List, Optional, Sequence, Tuple, TypeVar

from elan_arch.utils.errors import ElanError

J = TypeVar('J')  # a job (e.g. an (input, output) pair of paths)


@dataclass
class PipelineStats(Generic[J]):
    """What a run did: the jobs done and failed (with the error), and where the time went (seconds)."""
    done: List[J] = field(default_factory=list)
    failed: List[Tuple[J, ElanError]] = field(default_factory=list)
    wall: float = 0.0
    compute: float = 0.0
    read_wait: float = 0.0
    write_wait: float = 0.0


def _call(stage: Callable[..., Any], *args: Any) -> Any:
    """``stage(*args)``, or the :class:`ElanError` it raised (returned, to fail just this job)."""
    try:
        return stage(*args)
    except ElanError as err:
        return err


def run_pipeline(jobs: Sequence[J], read: Callable[[J], Any], compute: Callable[[J, Any], Any],
                 write: Callable[[J, Any], None], writers: int, on_error: Callable[[J, ElanError], None],
                 on_done: Optional[Callable[[J], None]] = None) -> PipelineStats[J]:
    """Run ``write(job, compute(job, read(job)))`` for every job, ``compute`` on the calling thread in job
    order, ``read`` one job ahead and ``write`` on ``writers`` threads (0: all three in turn on the calling
    thread, nothing in the background).

    ``on_error(job, error)`` is called (on the calling thread) for each job whose stage raised
    :class:`ElanError`; ``on_done(job)`` once a job's output is written. Returns the jobs done and failed and
    the time spent computing and waiting for reads and for writers.
    """
    stats: PipelineStats[J] = PipelineStats()
    start = time.perf_counter()
    if writers <= 0:
        for job in jobs:
            _finish_in_turn(job, read, compute, write, stats, on_error, on_done)
        stats.wall = time.perf_counter() - start
        return stats
    writing: Deque[Tuple[J, Future]] = deque()

    def collect(wait: bool) -> None:
        """Report the writes at the front of the queue that have finished, in job order; with ``wait``, all of
        them, waiting for each."""
        while writing and (wait or writing[0][1].done()):
            job, future = writing.popleft()
            waited = time.perf_counter()
            outcome = future.result()  # a non-ElanError re-raises here
            stats.write_wait += time.perf_counter() - waited
            _record(job, outcome, stats, on_error, on_done)

    def make_room() -> None:
        """Wait until fewer than ``writers`` writes are unfinished (finished ones hold no output)."""
        while True:
            busy = [future for _, future in writing if not future.done()]
            if len(busy) < writers:
                return
            waited = time.perf_counter()
            wait_for(busy, return_when=FIRST_COMPLETED)
            stats.write_wait += time.perf_counter() - waited

    with ThreadPoolExecutor(1, thread_name_prefix='elan-read') as reader, \
            ThreadPoolExecutor(writers, thread_name_prefix='elan-write') as writer:
        ahead: Optional[Future] = reader.submit(_call, read, jobs[0]) if jobs else None
        try:
            for index, job in enumerate(jobs):
                waited = time.perf_counter()
                image = ahead.result()
                stats.read_wait += time.perf_counter() - waited
                ahead = reader.submit(_call, read, jobs[index + 1]) if index + 1 < len(jobs) else None
                if isinstance(image, ElanError):
                    _record(job, image, stats, on_error, on_done)
                    continue
                began = time.perf_counter()
                output = _call(compute, job, image)
                stats.compute += time.perf_counter() - began
                del image
                if isinstance(output, ElanError):
                    _record(job, output, stats, on_error, on_done)
                    continue
                collect(wait=False)
                make_room()  # bounded memory: at most `writers` outputs waiting for a writer
                writing.append((job, writer.submit(_call, write, job, output)))
                del output
            collect(wait=True)
        except BaseException:
            if ahead is not None:
                ahead.cancel()
            raise  # the executors still finish the writes begun (each atomic: no partial file is left)
    stats.wall = time.perf_counter() - start
    return stats


def _finish_in_turn(job: J, read: Callable[[J], Any], compute: Callable[[J, Any], Any],
                    write: Callable[[J, Any], None], stats: PipelineStats[J],
                    on_error: Callable[[J, ElanError], None], on_done: Optional[Callable[[J], None]]) -> None:
    """One job's three stages in turn on this thread (``writers=0``)."""
    began = time.perf_counter()
    image = _call(read, job)
    stats.read_wait += time.perf_counter() - began
    if not isinstance(image, ElanError):
        began = time.perf_counter()
        image = _call(compute, job, image)
        stats.compute += time.perf_counter() - began
    if not isinstance(image, ElanError):
        began = time.perf_counter()
        image = _call(write, job, image)
        stats.write_wait += time.perf_counter() - began
    _record(job, image, stats, on_error, on_done)


def _record(job: J, outcome: Any, stats: PipelineStats[J], on_error: Callable[[J, ElanError], None],
            on_done: Optional[Callable[[J], None]]) -> None:
    if isinstance(outcome, ElanError):
        stats.failed.append((job, outcome))
        on_error(job, outcome)
    else:
        stats.done.append(job)
        if on_done is not None:
            on_done(job)


def default_writers() -> int:
    """Writer threads by default: all CPU cores but one (for the network's own work), from 1 to 8. Encoding
    a 4x output as PNG takes one core far longer than ELAN-light takes to compute it on a GPU, so it takes
    several writers to keep up (docs/performance.md, "Folder throughput")."""
    return max(1, min(8, (os.cpu_count() or 1) - 1))
