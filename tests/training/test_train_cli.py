"""``basicsr train`` / ``basicsr test`` / ``elan train`` end to end on CPU, in subprocesses, on the demo
LMDB built by ``prepare_demo``: checkpoints, validation, ``--auto_resume`` with optimizer, scheduler and
EMA state, SIGTERM saving a resumable state, and BasicSR's own option files running unchanged."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import List

import pytest
import torch

from elan_arch.cli import basicsr_cmd
from elan_arch.demo.run import compare_with_bicubic, load_images
from helpers.train import TEST_OPT, TRAIN_OPT, demo_root, ok, run_python

pytestmark = pytest.mark.slow  # basicsr train/test and torchrun in subprocesses

# The real ELAN-light of the demo option, on small batches so that a few iterations take seconds.
SMALL = ['datasets:train:gt_size=64', 'datasets:train:batch_size_per_gpu=2', 'datasets:train:num_worker_per_gpu=1',
         'logger:print_freq=1', 'train:ema_decay=0.9', 'train:scheduler:periods=[100]']
ENV = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')  # robust to a busy 2-core machine
EXP = Path('experiments', 'ELAN_light_x4_demo')


def basicsr(args: List[str], cwd: Path, command: str = 'basicsr') -> subprocess.CompletedProcess:
    """Run ``basicsr``/``elan`` as a user would (module form: the same ``main`` the console script calls)."""
    module = 'elan_arch.cli.basicsr_cmd' if command == 'basicsr' else 'elan_arch'
    return run_python(['-m', module, *args], cwd, ENV)


def bn_keys(state: dict) -> List[str]:
    return [k for k in state if 'running_' in k]


@pytest.fixture(scope='module')
def workdir(tmp_path_factory) -> Path:
    return demo_root(tmp_path_factory.mktemp('root'))


@pytest.fixture(scope='module')
def trained(workdir) -> dict:
    """4 iterations (checkpoints at 2 and 4, validation at 4), then ``--auto_resume`` to 6."""
    first = ok(basicsr(['train', '-opt', TRAIN_OPT, '--force_yml', *SMALL, 'train:total_iter=4',
                        'logger:save_checkpoint_freq=2', 'val:val_freq=4'], workdir))
    models = {p.name: torch.load(p) for p in (workdir / EXP / 'models').glob('*.pth')}
    second = ok(basicsr(['train', '-opt', TRAIN_OPT, '--auto_resume', '--force_yml', *SMALL, 'train:total_iter=6',
                         'logger:save_checkpoint_freq=2', 'val:val_freq=100'], workdir))
    return {'first': first, 'second': second, 'models_after_first': models}


def test_train_writes_checkpoints_states_validation_and_tensorboard(workdir, trained):
    exp = workdir / EXP
    assert {'net_g_2.pth', 'net_g_4.pth', 'net_g_latest.pth'} <= set(trained['models_after_first'])
    assert {'2.state', '4.state'} <= {p.name for p in (exp / 'training_states').iterdir()}
    assert 'Validation demo_val' in trained['first'] and re.search(r'# psnr: \d+\.\d+', trained['first'])
    assert list((workdir / 'tb_logger' / 'ELAN_light_x4_demo').glob('events.out.tfevents.*'))
    assert not [p for p in exp.rglob('.saving-*')]  # atomic checkpoint writes leave nothing behind
    saved = trained['models_after_first']['net_g_4.pth']
    assert set(saved) == {'params', 'params_ema', 'network_g'}  # the network's record (deploy/checkpoint.py)
    assert saved['network_g']['window_sizes'] == [4, 8, 16] and saved['network_g']['type'] == 'ELAN'
    # ELANModel's EMA carries BatchNorm statistics into params_ema (basicsr's would keep zeros / ones)
    keys = bn_keys(saved['params'])
    assert keys and all(torch.equal(saved['params'][k], saved['params_ema'][k]) for k in keys)
    assert any(saved['params'][k].abs().max() > 0 for k in keys if k.endswith('running_mean'))


def test_auto_resume_continues_with_optimizer_scheduler_and_ema(workdir, trained):
    assert 'Resuming training from epoch: 0, iter: 4' in trained['second']
    assert re.search(r'iter:\s+5,', trained['second']) and not re.search(r'iter:\s+[1-4],', trained['second'])
    state = torch.load(workdir / EXP / 'training_states' / '6.state')
    assert state['iter'] == 6
    assert all(s['step'] == 6 for s in state['optimizers'][0]['state'].values())  # Adam state carried over
    assert state['schedulers'][0]['last_epoch'] == 5  # stepped at iterations 2..6, not restarted
    ema_4 = trained['models_after_first']['net_g_4.pth']['params_ema']
    ema_6 = torch.load(workdir / EXP / 'models' / 'net_g_6.pth')['params_ema']
    # resumed from params_ema at 4: two EMA updates (decay 0.9) move it only part of the way
    weight = 'head.0.weight'
    params_6 = torch.load(workdir / EXP / 'models' / 'net_g_6.pth')['params'][weight]
    assert 0 < (ema_6[weight] - ema_4[weight]).abs().max() < (params_6 - ema_4[weight]).abs().max()


def test_basicsr_test_scores_match_the_demo_comparison(workdir, trained):
    log = ok(basicsr(['test', '-opt', TEST_OPT], workdir))
    logged = float(re.search(r'# psnr: (\d+\.\d+)', log).group(1))
    out = workdir / 'results' / 'test_ELAN_light_x4_demo' / 'visualization' / 'demo_val'
    assert sorted(p.name for p in out.glob('*.png')) == ['chelsea_test_ELAN_light_x4_demo.png',
                                                        'motorcycle_left_test_ELAN_light_x4_demo.png']
    val = workdir / 'datasets' / 'demo' / 'val'
    results = compare_with_bicubic(load_images(val / 'GTmod12', val / 'LRbicx4', out, 'test_ELAN_light_x4_demo', 4), 4)
    elan = sum(r['ELAN'][0] for r in results.values()) / len(results)
    bicubic = sum(r['bicubic'][0] for r in results.values()) / len(results)
    assert elan == pytest.approx(logged, abs=1e-4)  # same images, same metric as basicsr test
    assert 24 < bicubic < 35 and bicubic > elan  # 6 iterations do not beat bicubic; make demo does


def test_sigterm_saves_a_state_that_resumes(workdir):
    argv = ['train', '-opt', TRAIN_OPT, '--force_yml', *SMALL, 'name=interrupted', 'train:total_iter=1000',
            'train:scheduler:periods=[1000]', 'logger:save_checkpoint_freq=1000', 'val:val_freq=1000']
    proc = subprocess.Popen([sys.executable, '-m', 'elan_arch', *argv], cwd=workdir, env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    lines = []
    for line in proc.stdout:  # `elan train` (the alias) logs an 'iter:' line per iteration
        lines.append(line)
        if re.search(r'iter:\s+2,', line):
            os.killpg(proc.pid, signal.SIGTERM)  # the whole group, as Slurm or a terminal would
            break
    lines += proc.stdout.readlines()
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM, ''.join(lines[-30:])
    exp = workdir / 'experiments' / 'interrupted'
    states = sorted(int(p.stem) for p in (exp / 'training_states').glob('*.state'))
    assert len(states) == 1 and 2 <= states[0] < 1000
    stopped = states[0]
    assert (exp / 'models' / f'net_g_{stopped}.pth').is_file()
    assert f'stopped by SIGTERM after iteration {stopped}' in ''.join(lines)
    assert '--auto_resume' in ''.join(lines)
    resumed = ok(basicsr(['train', '-opt', TRAIN_OPT, '--auto_resume', '--force_yml', *SMALL, 'name=interrupted',
                          f'train:total_iter={stopped + 1}', 'train:scheduler:periods=[1000]', 'val:val_freq=1000'],
                         workdir))
    assert f'Resuming training from epoch: 0, iter: {stopped}' in resumed
    assert (exp / 'models' / 'net_g_latest.pth').is_file()


EDSR_OPTION = """\
name: edsr_plain
model_type: SRModel
scale: 4
num_gpu: 0
manual_seed: 3
datasets:
  train:
    name: demo
    type: PairedImageDataset
    dataroot_gt: {root}/datasets/demo/DIV2K_train_HR_sub.lmdb
    dataroot_lq: {root}/datasets/demo/DIV2K_train_LR_bicubic_X4_sub.lmdb
    io_backend: {{type: lmdb}}
    gt_size: 240  # the whole sub-image, and no flips: basicsr's augmentation draws nothing random
    use_hflip: false
    use_rot: false
    batch_size_per_gpu: 2
    num_worker_per_gpu: 0
    dataset_enlarge_ratio: 1
network_g: {{type: EDSR, num_in_ch: 3, num_out_ch: 3, num_feat: 16, num_block: 2, upscale: 4,
            res_scale: 1, img_range: 255., rgb_mean: [0.4488, 0.4371, 0.4040]}}
path: {{pretrain_network_g: ~, strict_load_g: true, resume_state: ~}}
train:
  ema_decay: 0.999
  optim_g: {{type: Adam, lr: !!float 1e-3}}
  scheduler: {{type: MultiStepLR, milestones: [2], gamma: 0.5}}
  total_iter: 3
  warmup_iter: -1
  pixel_opt: {{type: L1Loss, loss_weight: 1.0, reduction: mean}}
logger: {{print_freq: 1, save_checkpoint_freq: 100, use_tb_logger: false}}
"""
# basicsr without this package: only the torchvision alias that any basicsr 1.4.2 user needs.
PLAIN_BASICSR = textwrap.dedent("""\
    import importlib, os, sys
    sys.modules['torchvision.transforms.functional_tensor'] = importlib.import_module(
        'torchvision.transforms._functional_tensor')
    from basicsr.train import train_pipeline
    sys.argv = ['basicsr/train.py', '-opt', sys.argv[1]]
    train_pipeline(os.getcwd())
    assert not any(name.startswith('elan_arch') for name in sys.modules)
    """)


def test_basicsr_option_file_trains_identically_with_the_plugin(workdir, tmp_path):
    """The plugin's runtime fixes leave basicsr's training unchanged: same batches, same maths. (Random crops
    and flips differ by design: the plugin seeds them per sample for exact resume, elan_arch.data.sampler.)"""
    option = tmp_path / 'train_EDSR.yml'
    option.write_text(EDSR_OPTION.format(root=workdir))
    with_plugin, plain = tmp_path / 'with_plugin', tmp_path / 'plain'
    with_plugin.mkdir(), plain.mkdir()
    ok(basicsr(['train', '-opt', str(option)], with_plugin))
    ok(run_python(['-c', PLAIN_BASICSR, str(option)], plain, ENV))
    a, b = (torch.load(root / 'experiments' / 'edsr_plain' / 'models' / 'net_g_latest.pth')
            for root in (with_plugin, plain))
    assert set(a) == set(b) == {'params', 'params_ema'}
    for key in ('params', 'params_ema'):
        assert a[key].keys() == b[key].keys()
        assert all(torch.equal(a[key][name], b[key][name]) for name in a[key])


@pytest.mark.parametrize('content,message', [
    (None, 'no such file'),
    ('name: [unclosed', 'not valid YAML'),
    ('name: x\nmodel_type: ELANModel\nnetwork_g: {type: ELANN}\n', "network_g:type names 'ELANN'"),
    ('name: x\nmodel_type: NoSuchModel\n', "model_type names 'NoSuchModel'"),
    ('name: x\n', 'model_type is missing'),
])
def test_bad_option_files_stop_with_a_message(tmp_path, capsys, content, message):
    option = tmp_path / 'bad.yml'
    if content is not None:
        option.write_text(content)
    assert basicsr_cmd.main(['train', '-opt', str(option)]) == 2
    err = capsys.readouterr().err
    assert err.startswith('basicsr train: error: -opt ') and message in err and str(option) in err
