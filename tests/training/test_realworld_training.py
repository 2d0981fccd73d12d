"""Real-world training through the ``basicsr`` command on the CPU, as a user runs it: the repository's option
files (BasicSR's recipe with ELAN as ``network_g``, ``model_type: RealESRNetModel`` / ``RealESRGANModel``) on a
tiny HR set (helpers.realworld), both stages in one process and under torchrun with two gloo processes, an
interrupted run that ``--auto_resume`` continues to the weights of the uninterrupted one, and the start-up
checks of gt_size and queue_size.

The perceptual loss of stage 2 needs torchvision's pretrained VGG19, which cannot be downloaded here: the
tests write a stand-in checkpoint (random weights, the real file name, keys and shapes) into the hub folder of
a temporary TORCH_HOME, so BasicSR's PerceptualLoss runs its real code path; its loss values mean nothing.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import pytest
import torch

from helpers.realworld import REALWORLD, realworld_root, stand_in_vgg19, tiny_overrides
from helpers.train import TEST_ENV, ok, run_python, same_parameters, worker_command

pytestmark = pytest.mark.slow  # basicsr train and torchrun in subprocesses

NET = str(REALWORLD / 'train_ELAN_light_realesrnet_x4.yml')
GAN = str(REALWORLD / 'train_ELAN_light_realesrgan_x4.yml')
# batch 1 and a queue of 2: iterations 1-2 fill the queue, 3-4 take shuffled pairs out of it
ITERS = 4
TINY = tiny_overrides(batch=1, queue=2, iters=ITERS)


@pytest.fixture(scope='module')
def root(tmp_path_factory) -> Path:
    root = realworld_root(tmp_path_factory.mktemp('realworld_train'))
    stand_in_vgg19(root / 'torch_home')
    return root


def env(root: Path) -> dict:
    return dict(TEST_ENV, TORCH_HOME=str(root / 'torch_home'))


def train(root: Path, option: str, name: str, *force: str, auto_resume: bool = False) -> subprocess.CompletedProcess:
    argv = ['-m', 'elan_arch.cli.basicsr_cmd', 'train', '-opt', option] + ['--auto_resume'] * auto_resume
    return run_python(argv + ['--force_yml', *TINY, f'name={name}', *force], root, env(root))


def gan_start(root: Path) -> List[str]:
    return [f'path:pretrain_network_g={root / "experiments" / "net" / "models" / f"net_g_{ITERS}.pth"}']


@pytest.fixture(scope='module')
def net_run(root) -> dict:
    """Stage 1, uninterrupted: its log and final network file."""
    log = ok(train(root, NET, 'net'))
    return {'log': log, 'net': torch.load(root / 'experiments' / 'net' / 'models' / f'net_g_{ITERS}.pth')}


def test_stage_1_trains_on_the_cpu_and_saves_its_queue_and_degradation_stream(root, net_run):
    assert 'Model [RealESRNetModel] is created.' in net_run['log']
    assert re.search(rf'iter:\s+{ITERS},.*l_pix: \d', net_run['log'])
    assert {'params', 'params_ema'} <= set(net_run['net'])
    state = torch.load(root / 'experiments' / 'net' / 'training_states' / f'{ITERS}.state')  # weights_only
    (entry, ) = state['realworld']
    # the degraded inputs are multiples of 1/255 and stored as 8-bit; the USM-sharpened HR (gt_usm) is not
    assert entry['queue']['ptr'] == 2 and entry['queue']['lr']['uint8'].shape == (2, 3, 16, 16)
    assert entry['queue']['gt']['float32'].shape == (2, 3, 64, 64) and entry['stream'] is not None


def test_stage_2_trains_from_stage_1_with_the_discriminator_and_perceptual_loss(root, net_run):
    log = ok(train(root, GAN, 'gan', *gan_start(root), 'train:total_iter=2', 'logger:save_checkpoint_freq=2'))
    assert 'Model [RealESRGANModel] is created.' in log and 'Loss [PerceptualLoss] is created.' in log
    assert f'Loading ELAN model from {root / "experiments" / "net" / "models" / f"net_g_{ITERS}.pth"}' in log
    assert 'with param key: [params_ema]' in log
    line = re.search(r'iter:\s+2,.*', log).group(0)
    for loss in ('l_g_pix', 'l_g_percep', 'l_g_gan', 'l_d_real', 'l_d_fake'):
        assert re.search(rf'{loss}: -?\d', line), line
    models = root / 'experiments' / 'gan' / 'models'
    assert (models / 'net_g_2.pth').is_file() and (models / 'net_d_2.pth').is_file()
    net_d = torch.load(models / 'net_d_2.pth')['params']
    assert any(key.endswith('weight_orig') for key in net_d)  # spectral norm: UNetDiscriminatorSN


def _log_text(root: Path, name: str) -> str:
    logs = sorted((root / 'experiments' / name).glob(f'train_{name}_*.log'))
    return logs[-1].read_text() if logs else ''


def test_an_interrupted_run_resumes_to_the_weights_of_the_uninterrupted_one(root, net_run):
    """SIGINT after iteration 2 (the queue full): the state holds the queue and the degradation stream, and
    ``--auto_resume`` ends with stage 1's weights bit for bit (parameters and EMA)."""
    name = 'interrupted'
    argv = [sys.executable, '-m', 'elan_arch.cli.basicsr_cmd', 'train', '-opt', NET, '--force_yml', *TINY,
            f'name={name}']
    proc = subprocess.Popen(argv, cwd=root, env=env(root), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 300
    while not re.search(r'iter:\s+2,', _log_text(root, name)) and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=300) == 128 + signal.SIGINT, _log_text(root, name)[-3000:]
    stopped = int(re.search(r'stopped by SIGINT after iteration (\d+)', _log_text(root, name)).group(1))
    assert 2 <= stopped < ITERS
    out = ok(train(root, NET, name, auto_resume=True))
    assert f'Resuming training from epoch: 0, iter: {stopped}.' in out
    resumed = torch.load(root / 'experiments' / name / 'models' / f'net_g_{ITERS}.pth')
    assert same_parameters(resumed['params'], net_run['net']['params'])
    assert same_parameters(resumed['params_ema'], net_run['net']['params_ema'])


@pytest.mark.parametrize('stage', ['net', 'gan'])
def test_torchrun_two_gloo_processes_train_each_stage(root, net_run, tmp_path, stage):
    option, name = (NET, 'dist_net') if stage == 'net' else (GAN, 'dist_gan')
    force = ['--force_yml', *TINY, f'name={name}', 'train:total_iter=2', 'logger:save_checkpoint_freq=2']
    force += gan_start(root) if stage == 'gan' else []
    result = subprocess.run(
        worker_command(tmp_path, force, ['--standalone', '--nproc_per_node=2'], option=option),
        cwd=root, env=env(root), capture_output=True, text=True, timeout=600)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    assert 'gloo backend' in log and re.search(r'World size \(gpu number\): 2', log)
    rank0, rank1 = torch.load(tmp_path / 'rank0.pth'), torch.load(tmp_path / 'rank1.pth')
    weights = [key for key in rank0 if 'running' not in key and 'num_batches' not in key]
    assert weights and all(torch.equal(rank0[key], rank1[key]) for key in weights)  # DDP kept them equal
    state = torch.load(root / 'experiments' / name / 'training_states' / '2.state')
    ranks = state['realworld']
    assert len(ranks) == 2 and all(rank['queue']['ptr'] == 2 for rank in ranks)
    # each process degrades its own batches from its own stream (basicsr seeds seed + rank)
    assert not torch.equal(ranks[0]['queue']['lr']['uint8'], ranks[1]['queue']['lr']['uint8'])
    # Real-ESRGAN queues the HR crops unsharpened: 8-bit values, stored as such
    assert ('uint8' if stage == 'gan' else 'float32') in ranks[0]['queue']['gt']


def test_a_real_world_run_that_cannot_start_says_why_and_leaves_no_folder(root):
    """(Each rule of training/realworld_checks.py: tests/training/test_realworld_checks.py.)"""
    result = train(root, GAN, 'refused', 'queue_size=3', 'datasets:train:batch_size_per_gpu=2')
    assert result.returncode == 2, result.stderr[-2000:]
    assert 'option queue_size: 3 is not a multiple of the batch each training step degrades (2 per step' in \
        result.stderr
    assert 'Traceback' not in result.stderr
    assert not (root / 'experiments' / 'refused').exists() and not (root / 'tb_logger' / 'refused').exists()
