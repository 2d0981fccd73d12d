"""The real-world models (elan_arch.models.realworld) degrade exactly as basicsr 1.4.2's own code, and their
saved queue and degradation stream make a resumed model degrade as the uninterrupted one.

The reference is basicsr's ``RealESRNetModel``/``RealESRGANModel`` with their original ``__init__``,
``_dequeue_and_enqueue`` and ``feed_data``; on the CPU, ``.cuda()`` is made a no-op and basicsr's
``filter2D`` is given a contiguous copy of its input (its ``.view()`` fails on DiffJPEG's channels-last
output) in the reference run only. Same seed, same data: the batches that reach the network (``lq``, ``gt``
and the GAN model's ``gt_usm``) must be bit-identical, through the queue's fill and its shuffled dequeue.
"""
from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest
import torch
import yaml

import elan_arch  # noqa: F401  (before basicsr)
import basicsr.models.realesrgan_model as realesrgan_module
import basicsr.models.realesrnet_model as realesrnet_module
import basicsr.utils.img_process_util as img_process_util
from basicsr.data.realesrgan_dataset import RealESRGANDataset
from basicsr.models.realesrgan_model import RealESRGANModel
from basicsr.models.realesrnet_model import RealESRNetModel
from torch.utils.data import default_collate

from elan_arch.models import realworld
from elan_arch.models.realworld import BASICSR_FILTER2D, BASICSR_METHODS, RealELANGANModel, RealELANNetModel
from elan_arch.utils.errors import ElanError
from helpers.realworld import HR_FOLDER, META_INFO, REALWORLD, realworld_root

GT = 160  # HR crop fed to the models: the smallest on which every resize of the recipe leaves >10 pixels
DEVICES = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])
TINY_ELAN = {'type': 'ELAN', 'upscale': 4, 'c_elan': 24, 'm_elan': 2, 'n_share': 0, 'window_sizes': [4, 8, 16]}
TINY_RRDB = {'type': 'RRDBNet', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 8, 'num_block': 1, 'num_grow_ch': 4}


def options(stage: str, device: str, network_g: Dict[str, Any]) -> Dict[str, Any]:
    """The repository's option file of ``stage`` ('realesrnet' or 'realesrgan') as basicsr's parser leaves it,
    with a tiny generator and discriminator, no perceptual loss, a queue of 4 pairs of 64 pixels."""
    with open(REALWORLD / f'train_ELAN_light_{stage}_x4.yml') as handle:
        opt = yaml.safe_load(handle)
    opt.update(is_train=True, dist=False, rank=0, world_size=1, num_gpu=int(device == 'cuda'), gt_size=64,
               queue_size=4, network_g=network_g, auto_resume=False)
    opt['path'] = {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None}
    opt['train'].pop('perceptual_opt', None)
    if 'network_d' in opt:
        opt['network_d']['num_feat'] = 8
    return opt


@pytest.fixture(scope='module')
def batches(tmp_path_factory) -> List[Dict[str, torch.Tensor]]:
    """Three batches of two samples of BasicSR's ``RealESRGANDataset`` (its kernels), HR cut to GT pixels."""
    root = realworld_root(tmp_path_factory.mktemp('realworld'))
    with open(REALWORLD / 'train_ELAN_light_realesrnet_x4.yml') as handle:
        dataset_opt = yaml.safe_load(handle)['datasets']['train']
    dataset_opt.update(dataroot_gt=str(root / HR_FOLDER), meta_info=str(root / META_INFO), phase='train')
    np.random.seed(1)
    random.seed(1)
    dataset = RealESRGANDataset(dataset_opt)
    samples = [dataset[index % len(dataset)] for index in range(6)]
    for sample in samples:
        sample['gt'] = sample['gt'][:, :GT, :GT].contiguous()
    return [default_collate(samples[i:i + 2]) for i in range(0, 6, 2)]


def seed(value: int) -> None:
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)


def degrade(model: Any, batches: List[Dict[str, torch.Tensor]]) -> List[List[torch.Tensor]]:
    out = []
    for data in batches:
        model.feed_data(data)
        out.append([t.cpu().clone() for t in (model.lq, model.gt, getattr(model, 'gt_usm', model.gt))])
    return out


def basicsr_reference(cls: type, opt: Dict[str, Any], batches: List[Dict[str, torch.Tensor]], value: int,
                      monkeypatch: pytest.MonkeyPatch) -> List[List[torch.Tensor]]:
    """basicsr's own code of ``cls`` from seed ``value``; on the CPU ``.cuda()`` does nothing and filter2D gets
    contiguous inputs (the reference's bypasses, undone afterwards)."""
    reference = type(f'Basicsr{cls.__name__}', (cls,), dict(BASICSR_METHODS[cls]))
    with monkeypatch.context() as patch:
        def bypass(img: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
            return BASICSR_FILTER2D(img.clone(memory_format=torch.contiguous_format), kernel)

        for module in (img_process_util, realesrnet_module, realesrgan_module):
            patch.setattr(module, 'filter2D', bypass if opt['num_gpu'] == 0 else BASICSR_FILTER2D)
        if opt['num_gpu'] == 0:
            patch.setattr(torch.nn.Module, 'cuda', lambda self, device=None: self)
            patch.setattr(torch.Tensor, 'cuda', lambda self, *args, **kwargs: self)
        seed(0)
        model = reference(copy.deepcopy(opt))
        seed(value)
        return degrade(model, batches)


def fixed(cls: type, opt: Dict[str, Any], batches: List[Dict[str, torch.Tensor]], value: int) -> List[List[Any]]:
    seed(0)
    model = cls(copy.deepcopy(opt))
    seed(value)
    return degrade(model, batches)


def assert_identical(ours: List[List[torch.Tensor]], theirs: List[List[torch.Tensor]]) -> None:
    assert len(ours) == len(theirs) == 3
    for index, (a, b) in enumerate(zip(ours, theirs)):
        for name, x, y in zip(('lq', 'gt', 'gt_usm'), a, b):
            assert x.shape == y.shape and torch.equal(x, y), f'batch {index}: {name} differs'


@pytest.mark.slow  # about 10 s of CPU each: USMSharp's 101x101 blur
@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('ours, basicsr_cls, stage', [
    (RealELANNetModel, RealESRNetModel, 'realesrnet'), (RealELANGANModel, RealESRGANModel, 'realesrgan')])
def test_degraded_batches_equal_basicsrs(ours, basicsr_cls, stage, device, batches, monkeypatch):
    opt = options(stage, device, TINY_ELAN)
    theirs = basicsr_reference(basicsr_cls, opt, batches, 5, monkeypatch)
    mine = fixed(ours, opt, batches, 5)
    assert_identical(mine, theirs)
    # the queue was filled (batches 0-1) and then shuffled and dequeued (2): the network saw other pairs
    assert not torch.equal(mine[2][1], batches[2]['gt'][:, :, :64, :64])
    assert all(x.device.type == 'cpu' for x in mine[0])  # (copied back for the comparison)


@pytest.mark.slow
def test_basicsr_classes_fixed_by_the_command_equal_basicsrs_with_any_generator(batches, monkeypatch):
    opt = options('realesrgan', 'cpu', TINY_RRDB)
    theirs = basicsr_reference(RealESRGANModel, opt, batches, 7, monkeypatch)
    realworld.fix_basicsr_models()  # what basicsr_fixes.apply() installs
    assert_identical(fixed(RealESRGANModel, opt, batches, 7), theirs)
    assert img_process_util.filter2D is realworld.contiguous_filter2D


def test_a_resumed_model_degrades_as_the_uninterrupted_one(batches, tmp_path):
    """The state saved after two batches (queue full) gives a new model the same next batch, although the
    process's generators were disturbed in between (as a DataLoader's seed draw at an epoch start does)."""
    opt = options('realesrnet', 'cpu', TINY_ELAN)
    opt['path']['training_states'] = str(tmp_path)
    seed(0)
    model = RealELANNetModel(copy.deepcopy(opt))
    seed(3)
    degrade(model, batches[:2])
    assert model.queue_ptr == model.queue_size == 4
    model.save_training_state(epoch=0, current_iter=2)
    torch.rand(3), np.random.uniform(), random.random()  # other draws of the process
    continued = degrade(model, batches[2:])

    state = torch.load(tmp_path / '2.state')  # weights_only, as the resume of the basicsr command reads it
    queue = state['realworld'][0]['queue']
    assert state['iter'] == 2 and len(state['realworld']) == 1 and queue['ptr'] == 4
    assert queue['lr']['uint8'].shape == (4, 3, 16, 16) and queue['gt']['float32'].shape == (4, 3, 64, 64)
    seed(0)
    resumed = RealELANNetModel(copy.deepcopy(opt))
    seed(11)  # another process state: the stream is what matters
    resumed.resume_training(state)
    again = degrade(resumed, batches[2:])
    for a, b in zip(continued, again):
        assert all(torch.equal(x, y) for x, y in zip(a, b))


def basicsr_state(model: Any) -> Dict[str, Any]:
    """What basicsr's own ``save_training_state`` holds besides the epoch and iteration."""
    return {'optimizers': [o.state_dict() for o in model.optimizers],
            'schedulers': [s.state_dict() for s in model.schedulers]}


def test_a_state_that_cannot_be_written_stops_the_run_and_leaves_no_file(tmp_path, monkeypatch):
    import errno

    opt = options('realesrnet', 'cpu', TINY_ELAN)
    opt['path']['training_states'] = str(tmp_path)
    model = RealELANNetModel(opt)

    def full_disk(obj: Any, path: Any) -> None:
        Path(path).write_bytes(b'PK')  # the start of a file, then the disk is full
        raise OSError(errno.ENOSPC, 'No space left on device')

    monkeypatch.setattr(torch, 'save', full_disk)
    with pytest.raises(ElanError, match=r'could not write .*2\.state \(No space left on device\); is the disk full'):
        model.save_training_state(epoch=0, current_iter=2)
    assert list(tmp_path.iterdir()) == []


def test_a_queue_the_batch_does_not_divide_is_refused(batches):
    opt = options('realesrnet', 'cpu', TINY_ELAN)
    opt['queue_size'] = 3
    model = RealELANNetModel(opt)
    with pytest.raises(ElanError, match='option queue_size: 3 is not a multiple of the batch of 2'):
        model.feed_data(batches[0])


def test_a_state_without_realworld_entries_resumes_with_a_warning(batches, monkeypatch):
    from elan_arch.models import realworld_state

    warnings = []
    monkeypatch.setattr(realworld_state, 'warn', warnings.append)
    opt = options('realesrnet', 'cpu', TINY_ELAN)
    model = RealELANNetModel(opt)
    model.resume_training(basicsr_state(model))  # as basicsr's own RealESRNetModel writes it
    assert len(warnings) == 1 and 'holds no training-pair queue' in warnings[0]
    model.feed_data(batches[0])
    assert model.lq.shape == (2, 3, 16, 16) and model.queue_ptr == 2


def test_what_a_resume_cannot_restore_is_said_and_refilled(batches, monkeypatch):
    """Another number of processes, a queue of another shape, a batch that cannot fill the saved queue."""
    from elan_arch.models import realworld_state

    warnings = []
    monkeypatch.setattr(realworld_state, 'warn', warnings.append)
    opt = options('realesrnet', 'cpu', TINY_ELAN)
    model = RealELANNetModel(copy.deepcopy(opt))
    model.feed_data(batches[0])
    saved = realworld_state.local_state(model)  # ptr 2 of 4
    stream = model.degradation_stream.state

    resumed = RealELANNetModel(copy.deepcopy(opt))
    resumed.resume_training(dict(basicsr_state(resumed), realworld=[saved, saved]))
    assert 'saved by 2 process(es), this run has 1' in warnings.pop()
    assert resumed.queue_ptr == 2 and resumed.degradation_stream.state is stream

    smaller = RealELANNetModel(dict(copy.deepcopy(opt), gt_size=32))
    smaller.resume_training(dict(basicsr_state(smaller), realworld=[saved]))
    assert 'the options ask for queue_size 4 of gt_size 32: it refills from empty' in warnings.pop()
    assert not hasattr(smaller, 'queue_lr')

    resumed.queue_size = 5  # as if saved with ptr 2 of 5: batches of 2 would step past the end
    resumed.queue_lr, resumed.queue_gt = (torch.zeros(5, *t.shape[1:]) for t in (resumed.queue_lr, resumed.queue_gt))
    with pytest.raises(ElanError, match='queue_size: 5 is not a multiple'):
        resumed.feed_data(batches[1])
    assert 'holds 2 of 5 pairs, which batches of 2 cannot fill exactly' in warnings.pop()


def test_queue_images_are_stored_as_8_bit_only_where_that_is_exact():
    from elan_arch.models.realworld_state import pack, unpack

    levels = torch.randint(0, 256, (2, 3, 8, 8)).float() / 255.
    assert set(pack(levels)) == {'uint8'} and torch.equal(unpack(pack(levels), torch.device('cpu')), levels)
    sharpened = levels + 1e-3
    assert set(pack(sharpened)) == {'float32'} and torch.equal(unpack(pack(sharpened), torch.device('cpu')), sharpened)


def test_filter2d_fix_keeps_basicsrs_values_and_accepts_channels_last():
    img = torch.rand(2, 3, 40, 40).to(memory_format=torch.channels_last)
    kernel = torch.rand(2, 21, 21)
    with pytest.raises(RuntimeError, match='view size is not compatible'):
        BASICSR_FILTER2D(img, kernel)
    assert torch.equal(realworld.contiguous_filter2D(img, kernel), BASICSR_FILTER2D(img.contiguous(), kernel))
    plain = torch.rand(1, 3, 30, 30)
    assert torch.equal(realworld.contiguous_filter2D(plain, kernel[:1]), BASICSR_FILTER2D(plain, kernel[:1]))
