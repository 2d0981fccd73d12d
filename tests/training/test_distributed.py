"""Distributed training on CPU: ``torchrun --nproc_per_node=2 ... --launcher pytorch`` with gloo, and the
launcher fixes of :mod:`elan_arch.training.basicsr_fixes` (torchrun environment, Slurm environment)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from elan_arch.training import basicsr_fixes
from elan_arch.prepare import prepare_demo
from elan_arch.utils.errors import ElanError

pytestmark = pytest.mark.slow  # basicsr train/test and torchrun in subprocesses

REPO = Path(__file__).resolve().parents[2]
TRAIN_OPT = REPO / 'options' / 'train_ELAN_light_x4_demo.yml'
TORCH_DIST_VARS = ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT')


def test_torchrun_two_cpu_processes_end_with_identical_weights(tmp_path):
    prepare_demo(tmp_path / 'datasets' / 'demo', scales=(4, ), workers=1, progress=False)
    out = tmp_path / 'ranks'
    out.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1', CUDA_VISIBLE_DEVICES='')
    result = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
         str(REPO / 'tests' / 'helpers' / 'dist_worker.py'), str(out), 'train', '-opt', str(TRAIN_OPT),
         '--launcher', 'pytorch',
         '--force_yml', 'train:total_iter=3', 'datasets:train:gt_size=64', 'datasets:train:batch_size_per_gpu=2',
         'datasets:train:num_worker_per_gpu=0', 'logger:print_freq=1', 'logger:save_checkpoint_freq=3',
         'val:val_freq=100', 'train:ema_decay=0'],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    assert 'gloo backend' in log
    assert re.search(r'Batch size per gpu: 2\s+World size \(gpu number\): 2', log)
    assert re.search(r'iter:\s+3,', log)
    rank0, rank1 = torch.load(out / 'rank0.pth'), torch.load(out / 'rank1.pth')
    params = [name for name, _ in _elan_like(rank0).named_parameters()]
    # the ranks seed differently (basicsr: seed + rank); DDP broadcast rank 0's initialisation and
    # averaged the gradients, so the parameters agree bit for bit
    assert params and all(torch.equal(rank0[name], rank1[name]) for name in params)
    # BatchNorm statistics are per process (no SyncBN), as the reference's per-GPU statistics
    stats = [name for name in rank0 if name.endswith('running_mean')]
    assert any(not torch.equal(rank0[name], rank1[name]) for name in stats)
    exp = tmp_path / 'experiments' / 'ELAN_light_x4_demo'
    saved = torch.load(exp / 'models' / 'net_g_3.pth')['params']  # written by rank 0 only
    assert all(torch.equal(saved[name], rank0[name]) for name in params)
    assert (exp / 'training_states' / '3.state').is_file()


def _elan_like(state: dict) -> torch.nn.Module:
    """An ELAN-light x4 with the parameter names of ``state`` (to tell parameters from buffers)."""
    from elan_arch import ELAN

    net = ELAN(upscale=4)
    net.load_state_dict(state)
    return net


@pytest.fixture
def clean_dist_env(monkeypatch):
    for var in TORCH_DIST_VARS:
        monkeypatch.delenv(var, raising=False)
    yield monkeypatch
    if dist.is_initialized():
        dist.destroy_process_group()


def test_pytorch_launcher_without_torchrun_names_torchrun(clean_dist_env):
    with pytest.raises(ElanError, match='RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT not set.*torchrun'):
        basicsr_fixes.init_dist_pytorch()


def test_slurm_launcher_on_cpu(clean_dist_env, tmp_path):
    scontrol = tmp_path / 'scontrol'
    scontrol.write_text('#!/bin/sh\necho 127.0.0.1\necho node2\n')
    scontrol.chmod(0o755)
    clean_dist_env.setenv('PATH', f'{tmp_path}{os.pathsep}{os.environ["PATH"]}')
    clean_dist_env.setenv('CUDA_VISIBLE_DEVICES', '')
    for var, value in dict(SLURM_PROCID='0', SLURM_NTASKS='1', SLURM_NODELIST='node[1-2]', SLURM_LOCALID='0').items():
        clean_dist_env.setenv(var, value)
    if torch.cuda.is_available():
        pytest.skip('checks the CPU fallback')
    basicsr_fixes.init_dist_slurm(backend='nccl', port=29731)
    assert dist.is_initialized() and dist.get_backend() == 'gloo'
    assert (dist.get_rank(), dist.get_world_size()) == (0, 1)
    assert {var: os.environ[var] for var in TORCH_DIST_VARS} == {
        'RANK': '0', 'WORLD_SIZE': '1', 'LOCAL_RANK': '0', 'MASTER_ADDR': '127.0.0.1', 'MASTER_PORT': '29731'}


def test_slurm_environment_needs_slurm_variables():
    with pytest.raises(ElanError, match='SLURM_PROCID is not set.*srun'):
        basicsr_fixes.slurm_environment({})
    with pytest.raises(ElanError, match='neither MASTER_PORT nor SLURM_JOB_ID is set'):
        basicsr_fixes.slurm_environment(dict(SLURM_PROCID='0', SLURM_NTASKS='2', SLURM_NODELIST='n1'))


def test_slurm_port_differs_between_jobs_and_avoids_the_ephemeral_range():
    ports = [basicsr_fixes.slurm_port({'SLURM_JOB_ID': str(job)}) for job in (4711, 4712, 123456)]
    assert ports == [14711, 14712, 13456]  # 10000 + id % 20000, never basicsr's 29500 for every job


def test_torch_distributed_launch_local_rank_reaches_basicsr(tmp_path, monkeypatch):
    """``torch.distributed.launch`` passes ``--local-rank=N``, which basicsr's own parser rejects."""
    from basicsr.utils.options import parse_options

    from elan_arch.cli.basicsr_cmd import build_parser, pipeline_argv

    args = build_parser().parse_args(['train', '-opt', str(TRAIN_OPT), '--local-rank=3', '--auto_resume',
                                      '--force_yml', 'train:total_iter=7'])
    monkeypatch.setattr(sys, 'argv', ['basicsr train', *pipeline_argv(args)])
    opt, parsed = parse_options(str(tmp_path), is_train=True)
    assert parsed.local_rank == 3 and opt['auto_resume'] and opt['train']['total_iter'] == 7 and not opt['dist']
