"""When a single-process training run goes wrong (``basicsr train`` in subprocesses, the tiny ELAN of
``helpers_train.TINY`` on the demo LMDB): failed starts leave no folders, ``--auto_resume`` gets past a
damaged newest checkpoint, a damaged ``path.resume_state`` is an error naming it, a finished run extends
to a larger ``total_iter``, and a run killed with SIGKILL resumes to bit-identical weights (0 and 2 loader
workers). The distributed cases are in tests/training/test_elastic.py."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import pytest
import torch

from helpers.train import TEST_ENV, TINY, demo_root, frozen_option, ok, run_python, same_parameters, worker_command

pytestmark = pytest.mark.slow  # basicsr train/test and torchrun in subprocesses

# 12 iterations with checkpoints at 6 and 12; epochs of 10 iterations, so resuming at 6 continues an epoch
# in its middle and then crosses into the next one.
SCHEDULE = ['train:total_iter=12', 'train:scheduler:periods=[12]', 'logger:save_checkpoint_freq=6']
OPTION = 'train_ELAN_light_x4_demo.yml'  # frozen_option's copy in the root


def train(root: Path, name: str, *force: str, auto_resume: bool = False) -> subprocess.CompletedProcess:
    """``basicsr train`` of the tiny network as run ``name`` in ``root``; ``force`` overrides more options."""
    argv = ['-m', 'elan_arch.cli.basicsr_cmd', 'train', '-opt', str(root / OPTION)] + ['--auto_resume'] * auto_resume
    return run_python(argv + ['--force_yml', *TINY, *SCHEDULE, f'name={name}', *force], root, TEST_ENV)


def final_params(root: Path, name: str) -> dict:
    return torch.load(root / 'experiments' / name / 'models' / 'net_g_latest.pth')['params']


def files_under(folder: Path) -> List[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob('*'))


def truncate(path: Path) -> None:
    """Keep the first half of ``path``, as a full disk or an interrupted copy leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


@pytest.fixture(scope='module')
def root(tmp_path_factory) -> Path:
    root = demo_root(tmp_path_factory.mktemp('recovery'))
    frozen_option(root)
    return root


@pytest.fixture(scope='module')
def finished(root) -> dict:
    """An uninterrupted run: states and networks at 6 and 12, and its final parameters."""
    ok(train(root, 'base'))
    return final_params(root, 'base')


def copy_run(root: Path, name: str) -> Path:
    """A copy of the finished run ``base`` as run ``name``; its experiment folder."""
    shutil.copytree(root / 'experiments' / 'base', root / 'experiments' / name)
    return root / 'experiments' / name


def _bad_meta_info_lmdb(root: Path) -> Path:
    lmdb = root / 'datasets' / 'bad_meta' / 'LQ_x4.lmdb'
    shutil.copytree(root / 'datasets' / 'demo' / 'DIV2K_train_LR_bicubic_X4_sub.lmdb', lmdb)
    with open(lmdb / 'meta_info.txt', 'a') as meta:
        meta.write('9999_s001.png (60,60,3) 1\n')
    return lmdb


FAILED_STARTS = {  # fault: (options that cause it, given the root; what the message says)
    'missing dataroot': (lambda root: ['datasets:train:dataroot_gt=datasets/demo/missing.lmdb'],
                         'dataroot_gt datasets/demo/missing.lmdb (relative to the current directory: '
                         '{root}/datasets/demo/missing.lmdb) does not exist'),
    'LQ LMDB of another scale': (lambda root: ['scale=2', 'network_g:upscale=2'], 'is not x2 of LQ'),
    'meta_info key not stored': (lambda root: [f'datasets:train:dataroot_lq={_bad_meta_info_lmdb(root)}'],
                                 'meta_info.txt lists keys the LMDB does not store (9999_s001)'),
    'network option misspelt': (lambda root: ['network_g:c_elann=60'],
                                "option network_g:c_elann: ELAN has no option 'c_elann' (did you mean c_elan?)"),
    'pretrained weights of another scale': (lambda root: [f'path:pretrain_network_g={_x2_weights(root)}'],
                                            'x2_light.pth holds ELAN-light x2, but network_g configures ELAN (custom) '
                                            'x4 (colors=3, c_elan=60, m_elan=2, n_share=1, r_expand=2, lfe=shift, '
                                            'attention=asa): upscale 2 in the file, 4 configured; m_elan 24'),
}


def _x2_weights(root: Path) -> Path:
    from elan_arch import ELAN, ELAN_VARIANTS

    path = root / 'x2_light.pth'
    torch.save({'params': ELAN(upscale=2, **ELAN_VARIANTS['ELAN-light']).state_dict()}, path)
    return path


@pytest.mark.parametrize('fault', sorted(FAILED_STARTS))
def test_failed_start_leaves_no_folder(root, fault):
    name = f'failed_{fault.split()[0]}'
    options, message = FAILED_STARTS[fault]
    result = train(root, name, 'logger:use_tb_logger=true', *options(root))
    message = message.format(root=root)
    assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
    assert 'Traceback' not in result.stderr
    leftovers = [p for folder in ('experiments', 'tb_logger') for p in (root / folder).glob(f'{name}*')]
    assert not leftovers


TEST_FAILURES = {  # fault: (options, what the message says)
    'missing weights': (['path:pretrain_network_g=experiments/nothing/models/net_g_latest.pth'],
                        'path.pretrain_network_g: experiments/nothing/models/net_g_latest.pth (relative to the current '
                        'directory: {root}/experiments/nothing/models/net_g_latest.pth) does not exist'),
    'missing test set': (['path:pretrain_network_g=experiments/base/models/net_g_latest.pth',
                          'datasets:test_1:dataroot_lq=datasets/demo/val/LRbicx3'],
                         'dataroot_lq datasets/demo/val/LRbicx3 (relative to the current directory: '
                         '{root}/datasets/demo/val/LRbicx3)'),
    'weights of another scale': (['path:pretrain_network_g=x2_light.pth'], 'x2_light.pth holds ELAN-light x2'),
}


@pytest.mark.parametrize('fault', sorted(TEST_FAILURES))
def test_a_test_run_that_cannot_start_says_why_and_leaves_no_results_folder(root, finished, fault):
    _x2_weights(root)
    options, message = TEST_FAILURES[fault]
    test_option = str(Path(__file__).resolve().parents[2] / 'options' / 'test_ELAN_light_x4_demo.yml')
    result = run_python(['-m', 'elan_arch.cli.basicsr_cmd', 'test', '-opt', test_option, '--force_yml',
                         'name=failed_test', 'network_g:m_elan=2', *options], root, TEST_ENV)
    assert result.returncode == 2 and message.format(root=root) in result.stderr, result.stderr[-2000:]
    assert 'Traceback' not in result.stderr and not (root / 'results').exists()


@pytest.mark.parametrize('phase', ['train', 'test'])
def test_an_option_file_without_datasets_is_a_message(root, phase):
    option = root / f'no_datasets_{phase}.yml'
    option.write_text('\n'.join(line for line in (root / OPTION).read_text().split('\ndatasets:')[0].splitlines()
                                if line.strip()) + '\nnetwork_g: {type: ELAN}\n')
    result = run_python(['-m', 'elan_arch.cli.basicsr_cmd', phase, '-opt', str(option)], root, TEST_ENV)
    assert result.returncode == 2 and 'Traceback' not in result.stderr, result.stderr[-2000:]
    assert f'datasets is missing; basicsr {phase} needs a {phase} set' in result.stderr


def test_start_failing_after_the_folders_restores_the_previous_run(root, finished):
    before = files_under(root / 'experiments' / 'base')
    # a fresh start of 'base' that fails once the folders exist (basicsr's own spelling: 'supperted')
    result = train(root, 'base', 'train:optim_g:type=NoSuchOptimizer')
    assert result.returncode == 1 and 'optimizer NoSuchOptimizer is not supperted' in result.stderr, result.stderr
    assert files_under(root / 'experiments' / 'base') == before  # restored from its archive, nothing added
    assert not list((root / 'experiments').glob('base_archived_*'))
    # resuming reuses the folder, so the new log stays, with the error in it
    result = train(root, 'base', 'train:optim_g:type=NoSuchOptimizer', auto_resume=True)
    assert result.returncode == 1
    new_logs = sorted(set(files_under(root / 'experiments' / 'base')) - set(before))
    assert len(new_logs) == 1 and new_logs[0].endswith('.log')
    log = (root / 'experiments' / 'base' / new_logs[0]).read_text()
    assert 'Training failed: NotImplementedError: optimizer NoSuchOptimizer is not supperted' in log


@pytest.mark.parametrize('damaged', ['state', 'network'])
def test_auto_resume_moves_a_damaged_checkpoint_aside_and_resumes_the_previous(root, finished, damaged):
    exp = copy_run(root, f'damaged_{damaged}')
    bad = exp / ('training_states/12.state' if damaged == 'state' else 'models/net_g_12.pth')
    truncate(bad)
    out = ok(train(root, exp.name, auto_resume=True))
    warnings = [line for line in out.splitlines() if 'is damaged' in line]
    assert len(warnings) == 1 and str(bad) in warnings[0] and 'moved aside' in warnings[0]
    assert (exp / 'training_states' / '12.state.damaged').is_file()
    assert (exp / 'models' / 'net_g_12.pth.damaged').is_file()
    assert 'Resuming training from epoch: 0, iter: 6.' in out
    logs = [path.read_text() for path in exp.glob(f'train_{exp.name}_*.log')]
    assert sum('is damaged' in log and str(bad) in log for log in logs) == 1  # the warning is in the new log
    assert same_parameters(final_params(root, exp.name), finished)  # iterations 7-12 again, the same ones


def test_a_damaged_resume_state_named_in_the_options_is_an_error(root, finished):
    exp = copy_run(root, 'explicit')
    truncate(exp / 'training_states' / '12.state')
    before = files_under(exp)
    result = train(root, 'explicit', f'path:resume_state={exp}/training_states/12.state')
    assert result.returncode == 2
    assert f'path.resume_state: cannot resume from {exp}/training_states/12.state (' in result.stderr
    assert 'does not load' in result.stderr and files_under(exp) == before  # nothing moved or made


def test_extending_a_finished_run_follows_the_new_schedule(root, finished):
    copy_run(root, 'extended')
    result = train(root, 'extended', 'train:total_iter=18', auto_resume=True)
    assert result.returncode == 2 and '--force_yml train:scheduler:periods=[18]' in result.stderr
    out = ok(train(root, 'extended', 'train:total_iter=18', 'train:scheduler:periods=[18]', auto_resume=True))
    assert 'Resuming training from epoch: 1, iter: 12.' in out
    assert 'scheduler 0: periods [12] -> [18], cumulative_period [12] -> [18]' in out
    state = torch.load(root / 'experiments' / 'extended' / 'training_states' / '18.state')
    assert state['iter'] == 18 and state['schedulers'][0]['periods'] == [18]


@pytest.mark.parametrize('workers', [0, 2])
def test_run_killed_with_sigkill_resumes_to_identical_weights(root, finished, tmp_path, workers):
    name, loader = f'killed_{workers}', f'datasets:train:num_worker_per_gpu={workers}'
    force = ['--force_yml', *TINY, *SCHEDULE, f'name={name}', loader]
    killed = subprocess.run(worker_command(tmp_path, force, option=str(root / OPTION)), cwd=root,
                            env=dict(TEST_ENV, ELAN_TEST_KILL='0:8'), capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    states = root / 'experiments' / name / 'training_states'
    assert sorted(p.name for p in states.iterdir()) == ['6.state']  # iterations 7 and 8 are lost
    out = ok(train(root, name, loader, auto_resume=True))
    assert 'Resuming training from epoch: 0, iter: 6.' in out
    assert same_parameters(final_params(root, name), finished)


def _log_text(root: Path, name: str) -> str:
    logs = sorted((root / 'experiments' / name).glob(f'train_{name}_*.log'))
    return logs[-1].read_text() if logs else ''


@pytest.mark.parametrize('console', ['pipe whose reader exits', 'full disk'])
def test_interrupted_with_a_broken_console_saves_and_resumes_to_identical_weights(root, finished, console):
    """``basicsr train ... 2>&1 | tee train.log`` and Ctrl-C, which ends tee too; or output redirected to a full
    disk (/dev/full) and SIGTERM: the state is saved all the same, the exit status says so, and the run
    resumes to the weights of the uninterrupted one."""
    name = 'piped' if console.startswith('pipe') else 'full_disk'
    argv = [sys.executable, '-m', 'elan_arch.cli.basicsr_cmd', 'train', '-opt', str(root / OPTION),
            '--force_yml', *TINY, *SCHEDULE, f'name={name}']
    sig = signal.SIGINT if console.startswith('pipe') else signal.SIGTERM
    if console.startswith('pipe'):
        read_end, write_end = os.pipe()
        proc = subprocess.Popen(argv, cwd=root, env=TEST_ENV, stdout=write_end, stderr=write_end,
                                start_new_session=True)
        os.close(write_end)
        with os.fdopen(read_end) as reader:  # tee
            for line in reader:
                if re.search(r'iter:\s+2,', line):
                    break
        # the reader is gone: the next write to the pipe fails (EPIPE)
    else:
        with open('/dev/full', 'w') as full:  # every write: ENOSPC
            proc = subprocess.Popen(argv, cwd=root, env=TEST_ENV, stdout=full, stderr=full, start_new_session=True)
        deadline = time.monotonic() + 300
        while not re.search(r'iter:\s+2,', _log_text(root, name)) and proc.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    os.killpg(proc.pid, sig)  # the whole group, as the terminal does (tee with it)
    assert proc.wait(timeout=120) == 128 + sig, _log_text(root, name)[-3000:]
    log = _log_text(root, name)
    stopped = int(re.search(rf'stopped by {sig.name} after iteration (\d+)', log).group(1))
    exp = root / 'experiments' / name
    assert (exp / 'training_states' / f'{stopped}.state').is_file()
    assert (exp / 'models' / f'net_g_{stopped}.pth').is_file()
    assert 'To continue: `basicsr train -opt ' in log and 'Training failed' not in log
    out = ok(train(root, name, auto_resume=True))
    assert f'Resuming training from epoch: 0, iter: {stopped}.' in out
    assert same_parameters(final_params(root, name), finished)


def test_a_checkpoint_file_that_does_not_load_back_stops_the_save(tmp_path):
    """A full disk: basicsr's ``save_network`` only warns when ``torch.save`` fails and leaves the file truncated."""
    from types import SimpleNamespace

    from elan_arch.training import basicsr_fixes
    from elan_arch.utils.errors import ElanError

    def save_network(model):
        (Path(model.opt['path']['models']) / 'net_g_8.pth').write_bytes(b'PK\x03\x04 cut short')

    model = SimpleNamespace(opt={'rank': 0, 'path': {'models': str(tmp_path / 'models')}})
    with pytest.raises(ElanError, match=r'could not write .*/models/net_g_8.pth \(does not load.*disk full'):
        basicsr_fixes._saved_atomically(save_network, 'models')(model)
    assert list((tmp_path / 'models').iterdir()) == [] and model.opt['path']['models'] == str(tmp_path / 'models')
