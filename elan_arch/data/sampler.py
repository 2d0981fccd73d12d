"""Training batches that a resumed run reproduces exactly.

basicsr 1.4.2 restarts the interrupted epoch from its first batch on resume, and its augmentation
randomness (random crop, flips, rotation) comes from the global ``random``/``numpy`` state of the
main process or of each DataLoader worker, reseeded identically at every epoch; neither is saved.
A resumed run therefore trains on other batches than the run it continues.

Here the order is basicsr's own (:class:`ResumableSampler` yields the indices of
``EnlargedSampler``: a permutation seeded by the epoch, every ``world_size``-th entry for a rank),
but each item also carries a seed derived from ``(manual_seed, epoch, position in the epoch's
permutation)``, and :class:`SeededDataset` seeds ``random``, ``numpy.random`` and ``torch`` with it
for the duration of that one ``__getitem__``. A sample's augmentation thus depends on nothing but
the run's seed and where the sample is in the schedule: not on the loader worker that reads it, the
number of workers, the rank, or on whether the run was interrupted. A resumed run skips the batches
the interrupted run had already trained on in that epoch (:func:`resume_position`).
"""
from __future__ import annotations

import contextlib
import random
from typing import Any, Iterator, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from basicsr.data.data_sampler import EnlargedSampler

SeededIndex = Tuple[int, int]  # (dataset index, sample seed)


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """A 32-bit seed for the sample at ``position`` of ``epoch``'s permutation in a run seeded ``seed``."""
    return int(np.random.SeedSequence([seed, epoch, position]).generate_state(1)[0])


@contextlib.contextmanager
def seeded_rngs(seed: int) -> Iterator[None]:
    """Seed ``random``, ``numpy.random`` and torch's CPU generator with ``seed``.

    In the main process (``num_worker_per_gpu: 0``) their states are restored afterwards, so training's
    own random streams are not touched; a DataLoader worker only reads samples, and skips the restoring
    (saving numpy's state costs more than the rest: about 40 us per sample here without it).
    """
    saved = None if get_worker_info() is not None else (random.getstate(), np.random.get_state(),
                                                          torch.get_rng_state())
    random.seed(seed)
    np.random.seed(seed)
    torch.default_generator.manual_seed(seed)  # torch.manual_seed also seeds every CUDA device: slow
    try:
        yield
    finally:
        if saved is not None:
            random.setstate(saved[0])
            np.random.set_state(saved[1])
            torch.set_rng_state(saved[2])


class SeededDataset(Dataset):
    """Wraps a map-style dataset: item ``(index, seed)`` is ``dataset[index]`` computed under :func:`seeded_rngs`."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, item: SeededIndex) -> Any:
        index, seed = item
        with seeded_rngs(seed):
            return self.dataset[index]


class ResumableSampler(EnlargedSampler):
    """basicsr's ``EnlargedSampler`` (same constructor, same indices) yielding ``(index, seed)`` items.

    :meth:`configure` sets the run's seed and, on resume, ``(epoch, batches)``: the first
    ``batches * batch_size`` items of that epoch are skipped (they were trained on before the
    interruption). The skip applies to every iteration of the sampler while the epoch stays the
    one resumed (basicsr's prefetcher creates and discards one loader iterator before the loop)
    and ends with the first :meth:`set_epoch` to another epoch.
    """

    def __init__(self, dataset: Sequence, num_replicas: int, rank: int, ratio: int = 1) -> None:
        super().__init__(dataset, num_replicas, rank, ratio)
        self.seed = 0
        self.resume: Optional[Tuple[int, int]] = None  # (epoch, items of this rank to skip)

    def configure(self, seed: int, batch_size: int, resume: Optional[Tuple[int, int]] = None) -> None:
        """Seed of the run; ``resume``: (epoch, batches of that epoch already trained on)."""
        self.seed = int(seed)
        self.resume = None if resume is None else (resume[0], resume[1] * batch_size)

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        if self.resume is not None and self.resume[0] != epoch:
            self.resume = None

    def __iter__(self) -> Iterator[SeededIndex]:
        generator = torch.Generator()
        generator.manual_seed(self.epoch)
        order = torch.randperm(self.total_size, generator=generator).tolist()
        positions = range(self.rank, self.total_size, self.num_replicas)
        skip = self.resume[1] if self.resume is not None and self.resume[0] == self.epoch else 0
        size = len(self.dataset)
        for position in positions[skip:]:
            yield order[position] % size, sample_seed(self.seed, self.epoch, position)


def resume_position(epoch: int, iteration: int, iters_per_epoch: int) -> Optional[Tuple[int, int]]:
    """``(epoch, batches of it trained on)`` for a state saved at ``iteration`` in ``epoch``.

    With this sampler from the start, epoch ``e`` holds iterations ``e*L+1 .. (e+1)*L``
    (``L = iters_per_epoch``). None when ``iteration`` does not fall in that range (a state of a run
    with another batch size or world size, or of plain basicsr): the epoch then restarts, as in basicsr.
    """
    done = iteration - epoch * iters_per_epoch
    return (epoch, done) if 0 <= done <= iters_per_epoch else None
