"""elan_arch/inference/pipeline.py: reading ahead and writing behind overlap the computation, memory stays
bounded, a failing job fails alone, a bug stops the run."""
from __future__ import annotations

import threading
import time
from typing import Dict, List

import pytest

from elan_arch.utils.errors import ElanError
from elan_arch.inference.pipeline import run_pipeline

WAIT = 10.0  # seconds a stage waits for the overlap it expects before giving up (only reached on failure)


class Recorder:
    """Stages that log what runs where, with an error or a wait for a chosen job."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.log: List[str] = []
        self.threads: Dict[str, str] = {}
        self.read_started = {j: threading.Event() for j in range(10)}
        self.write_started = {j: threading.Event() for j in range(10)}
        self.alive = self.most_alive = 0
        self.written: Dict[int, str] = {}
        self.errors: List[tuple] = []

    def note(self, what: str) -> None:
        with self.lock:
            self.log.append(what)
            self.threads[what] = threading.current_thread().name

    def read(self, job: int) -> str:
        self.read_started[job].set()
        self.note(f'read {job}')
        return f'image {job}'

    def compute(self, job: int, image: str) -> str:
        self.note(f'compute {job}')
        with self.lock:
            self.alive += 1
            self.most_alive = max(self.most_alive, self.alive)
        return image.replace('image', 'output')

    def write(self, job: int, output: str) -> None:
        self.write_started[job].set()
        self.note(f'write {job}')
        time.sleep(0.02)
        with self.lock:
            self.written[job] = output
            self.alive -= 1

    def on_error(self, job: int, error: ElanError) -> None:
        self.errors.append((job, str(error), threading.current_thread() is threading.main_thread()))


def test_reading_ahead_and_writing_behind_overlap_the_computation():
    rec = Recorder()
    overlaps = []

    def compute(job: int, image: str) -> str:
        # the next image is read while this one computes, and the previous one is written
        overlaps.append((rec.read_started[job + 1].wait(WAIT) if job < 4 else True,
                         rec.write_started[job - 1].wait(WAIT) if job > 0 else True))
        return rec.compute(job, image)

    stats = run_pipeline(list(range(5)), rec.read, compute, rec.write, writers=2, on_error=rec.on_error)
    assert overlaps == [(True, True)] * 5
    assert stats.done == [0, 1, 2, 3, 4] and stats.failed == [] and rec.errors == []
    assert rec.written == {j: f'output {j}' for j in range(5)}
    assert [w for w in rec.log if w.startswith('compute')] == [f'compute {j}' for j in range(5)]
    assert {rec.threads[f'compute {j}'] for j in range(5)} == {threading.main_thread().name}
    assert all(rec.threads[f'read {j}'].startswith('elan-read') for j in range(5))
    assert all(rec.threads[f'write {j}'].startswith('elan-write') for j in range(5))
    assert stats.wall >= stats.compute > 0


@pytest.mark.parametrize('writers', [1, 3])
def test_outputs_waiting_for_writers_stay_bounded(writers):
    rec = Recorder()

    def slow_write(job: int, output: str) -> None:
        time.sleep(0.05)
        rec.write(job, output)

    stats = run_pipeline(list(range(8)), rec.read, rec.compute, slow_write, writers=writers, on_error=rec.on_error)
    assert stats.done == list(range(8)) and len(rec.written) == 8
    # at most `writers` outputs queued (or being written) and the one computed next
    assert rec.most_alive <= writers + 1
    assert stats.write_wait > 0  # the computation outran the writers and waited for them


def test_a_slow_write_does_not_hold_up_the_other_writers():
    """Writes finish out of order: with 2 writers, image 0's write may last until image 3's starts (the
    other writer keeps going), and the results are still reported in job order."""
    rec = Recorder()
    waited = []

    def write(job: int, output: str) -> None:
        if job == 0:
            waited.append(rec.write_started[3].wait(WAIT))
        rec.write(job, output)

    done: List[int] = []
    stats = run_pipeline(list(range(5)), rec.read, rec.compute, write, writers=2, on_error=rec.on_error,
                         on_done=done.append)
    assert waited == [True] and done == stats.done == [0, 1, 2, 3, 4]


@pytest.mark.parametrize('writers', [0, 2])
def test_a_failing_stage_fails_its_job_only(writers):
    rec = Recorder()

    def read(job: int) -> str:
        if job == 1:
            raise ElanError('1.png cannot be read')
        return rec.read(job)

    def compute(job: int, image: str) -> str:
        if job == 2:
            raise ElanError('2.png: out of memory')
        return rec.compute(job, image)

    def write(job: int, output: str) -> None:
        if job == 3:
            raise ElanError('3.png: disk full')
        rec.write(job, output)

    done: List[int] = []
    stats = run_pipeline(list(range(5)), read, compute, write, writers=writers, on_error=rec.on_error,
                         on_done=done.append)
    assert stats.done == done == [0, 4]
    assert [(job, str(err)) for job, err in stats.failed] == [
        (1, '1.png cannot be read'), (2, '2.png: out of memory'), (3, '3.png: disk full')]
    assert rec.errors == [(1, '1.png cannot be read', True), (2, '2.png: out of memory', True),
                          (3, '3.png: disk full', True)]  # reported on the calling thread, in job order
    assert sorted(rec.written) == [0, 4]
    if writers == 0:
        assert set(rec.threads.values()) == {threading.main_thread().name}


def test_a_bug_stops_the_run_after_the_writes_begun():
    rec = Recorder()

    def compute(job: int, image: str) -> str:
        if job == 2:
            raise ValueError('a bug')
        return rec.compute(job, image)

    with pytest.raises(ValueError, match='a bug'):
        run_pipeline(list(range(5)), rec.read, compute, rec.write, writers=2, on_error=rec.on_error)
    assert rec.written == {0: 'output 0', 1: 'output 1'}  # finished before the error propagated
    assert 'compute 3' not in rec.log


def test_no_jobs():
    stats = run_pipeline([], lambda job: None, lambda job, image: None, lambda job, out: None, writers=2,
                         on_error=lambda job, err: None)
    assert stats.done == [] and stats.failed == []
