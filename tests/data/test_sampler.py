"""``elan_arch.data.sampler``: basicsr's batch order, augmentation seeded per sample, resuming mid-epoch."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from elan_arch.data.sampler import ResumableSampler, SeededDataset, resume_position  # before basicsr (compat)
from basicsr.data.data_sampler import EnlargedSampler  # isort: skip


class RandomDraws(Dataset):
    """Item i: (i, a draw of random, of numpy.random and of torch), as augmentations draw them."""

    def __len__(self) -> int:
        return 10

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.tensor([index, random.random(), np.random.rand(), torch.rand(()).item()], dtype=torch.float64)


def test_indices_are_basicsrs_and_seeds_are_per_position():
    data = list(range(10))
    items = []
    for rank in range(2):
        ours, theirs = ResumableSampler(data, 2, rank, ratio=3), EnlargedSampler(data, 2, rank, ratio=3)
        ours.configure(seed=7, batch_size=4)
        ours.set_epoch(2), theirs.set_epoch(2)
        items += list(ours)
        assert [index for index, _ in list(ours)] == list(theirs) and len(ours) == len(theirs) == 15
    seeds = [seed for _, seed in items]
    assert len(set(seeds)) == 30  # every position of the epoch, on either rank, has its own seed
    other = ResumableSampler(data, 2, 0, ratio=3)
    other.configure(seed=8, batch_size=4)
    other.set_epoch(2)
    assert [seed for _, seed in other] != seeds[:15]


def test_resumed_epoch_skips_the_batches_trained_on_until_the_next_epoch():
    sampler = ResumableSampler(list(range(10)), 1, 0, ratio=2)
    sampler.configure(seed=1, batch_size=3)
    sampler.set_epoch(4)
    whole = list(sampler)
    sampler.configure(seed=1, batch_size=3, resume=(4, 2))
    sampler.set_epoch(4)
    assert list(sampler) == whole[6:] and list(sampler) == whole[6:]  # every iterator of epoch 4
    sampler.set_epoch(5)
    assert len(list(sampler)) == 20


@pytest.mark.parametrize('epoch,iteration,expected', [(0, 6, (0, 6)), (0, 9, (0, 9)), (1, 12, (1, 3)), (1, 9, (1, 0)),
                                                     (0, 10, None), (2, 12, None)])
def test_resume_position_from_a_states_epoch_and_iteration(epoch, iteration, expected):
    assert resume_position(epoch, iteration, 9) == expected


def test_seeded_items_do_not_depend_on_workers_and_leave_the_global_generators_alone():
    sampler = ResumableSampler(RandomDraws(), 1, 0, ratio=2)
    sampler.configure(seed=3, batch_size=4)
    batches = {workers: torch.cat(list(DataLoader(SeededDataset(RandomDraws()), batch_size=4, sampler=sampler,
                                                  num_workers=workers)))
               for workers in (0, 2)}
    assert torch.equal(batches[0], batches[2])
    assert len(set(batches[0][:, 1].tolist())) == 20  # an image twice in an epoch gets other crops and flips
    before = random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state()
    first = next(iter(sampler))
    assert torch.equal(SeededDataset(RandomDraws())[first], batches[0][0])
    assert random.getstate() == before[0] and np.array_equal(np.random.get_state()[1], before[1])
    assert torch.equal(torch.get_rng_state(), before[2])
