"""Distributed training when things go wrong, on CPU (gloo) with torchrun on this machine: two torchrun agents
as two nodes (identical weights, only rank 0's machine writes), a worker killed with SIGKILL mid-run in a
2-process group (it restarts, resumes and ends with the weights of the uninterrupted two-node run: the same
two ranks), SIGTERM to torchrun's agent (pre-emption: a state that a rerun continues), and the start-up of
:mod:`elan_arch.training.elastic` (a stale post of a dead attempt, a peer that never comes)."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import List, Optional

import pytest
import torch
import torch.distributed as dist

from elan_arch.training import elastic
from elan_arch.utils.errors import ElanError
from helpers.train import TEST_ENV, TINY, demo_root, frozen_option, same_parameters, worker_command

pytestmark = pytest.mark.slow  # basicsr train/test and torchrun in subprocesses

# 2 ranks x batch 12: 10 iterations per epoch; checkpoints every 3 iterations.
DDP = [*TINY, 'datasets:train:batch_size_per_gpu=12', 'logger:save_checkpoint_freq=3']
STANDALONE = ['--standalone', '--nproc_per_node=2']


def force(name: str, total: int, *more: str) -> List[str]:
    return ['--force_yml', *DDP, f'name={name}', f'train:total_iter={total}', f'train:scheduler:periods=[{total}]',
            *more]


def torchrun(cwd: Path, out: Path, torchrun_args: List[str], train_args: List[str],
             env: Optional[dict] = None) -> subprocess.CompletedProcess:
    out.mkdir(parents=True, exist_ok=True)
    return subprocess.run(worker_command(out, train_args, torchrun_args, option(cwd)), cwd=cwd, env=env or TEST_ENV,
                          capture_output=True, text=True, timeout=600)


def succeeded(result: subprocess.CompletedProcess) -> str:
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    return log


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        return probe.getsockname()[1]


@pytest.fixture(scope='module')
def root(tmp_path_factory) -> Path:
    root = demo_root(tmp_path_factory.mktemp('elastic'))
    frozen_option(root)
    return root


def option(root: Path) -> str:
    return str(root / 'train_ELAN_light_x4_demo.yml')  # frozen_option's copy


@pytest.fixture(scope='module')
def two_nodes(root, tmp_path_factory) -> dict:
    """Two torchrun agents on this machine as two nodes (c10d on 127.0.0.1, one process each, each in its
    own folder with the same data), 12 iterations: ``{rank: (node folder, final state_dict)}``."""
    port, nodes = free_port(), [tmp_path_factory.mktemp('node_a'), tmp_path_factory.mktemp('node_b')]
    agents = []
    for node in nodes:
        (node / 'out').mkdir()
        (node / 'datasets').symlink_to(root / 'datasets')  # the data on every machine
        rendezvous = ['--nnodes=2', '--nproc_per_node=1', '--rdzv-backend=c10d', f'--rdzv-endpoint=127.0.0.1:{port}',
                      '--rdzv-id=two_nodes', '--local-addr=127.0.0.1']
        agents.append(subprocess.Popen(worker_command(node / 'out', force('two_nodes', 12), rendezvous, option(root)),
                                       cwd=node, env=TEST_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       text=True))
    logs = [agent.communicate(timeout=600)[0] for agent in agents]
    assert [agent.returncode for agent in agents] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    return {int(path.stem[len('rank'):]): (node, torch.load(path))
            for node in nodes for path in (node / 'out').glob('rank*.pth')}


def test_two_nodes_on_this_machine_end_with_identical_weights_and_rank_0_saves(two_nodes):
    assert sorted(two_nodes) == [0, 1]
    (node0, rank0), (node1, rank1) = two_nodes[0], two_nodes[1]
    assert node0 != node1
    params = [name for name in rank0 if 'running_' not in name and 'num_batches' not in name]
    assert params and all(torch.equal(rank0[name], rank1[name]) for name in params)
    # only the machine that got rank 0 writes the experiment folder
    assert (node0 / 'experiments' / 'two_nodes' / 'models' / 'net_g_12.pth').is_file()
    assert not (node1 / 'experiments').exists()


def test_worker_killed_with_sigkill_restarts_resumes_and_matches_an_uninterrupted_run(root, two_nodes):
    env = dict(TEST_ENV, ELAN_TEST_KILL='1:5')  # rank 1 dies after iteration 5; the newest state is 3
    log = succeeded(torchrun(root, root / 'out_killed', [*STANDALONE, '--max-restarts=2'], force('killed', 12),
                             env))
    assert re.search(r'failed \(exitcode: -9\) local_rank: 1', log)
    assert log.count('torchrun restarted the worker group: resuming from the newest intact checkpoint') == 1
    assert 'Resuming training from epoch: 0, iter: 3.' in log and re.search(r'iter:\s+12,', log)
    exp = root / 'experiments' / 'killed'
    assert sorted(int(p.stem) for p in (exp / 'training_states').glob('*.state')) == [3, 6, 9, 12]
    assert not list((root / 'experiments').glob('killed_archived_*'))  # the restart reused the folder
    # iterations 4 and 5 were trained twice, on the same batches: every weight and statistic of rank 0 is the
    # same as in the uninterrupted run of two ranks (which two nodes of one process each also are)
    assert same_parameters(torch.load(root / 'out_killed' / 'rank0.pth'), two_nodes[0][1])


def test_sigterm_to_torchrun_stops_all_ranks_with_a_state_that_a_rerun_continues(root):
    no_checkpoint = 'logger:save_checkpoint_freq=400'
    command = worker_command(root / 'out_sigterm', force('preempted', 400, no_checkpoint),
                             [*STANDALONE, '--max-restarts=2'], option(root))
    (root / 'out_sigterm').mkdir()
    agent = subprocess.Popen(command, cwd=root, env=TEST_ENV, text=True, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT)
    lines = []
    for line in agent.stdout:
        lines.append(line)
        if re.search(r'iter:\s+4,', line):
            agent.send_signal(signal.SIGTERM)  # what Slurm or Kubernetes send to the launcher
            break
    lines += agent.stdout.readlines()
    agent.wait(timeout=120)
    log = ''.join(lines)
    states = sorted(int(p.stem) for p in (root / 'experiments' / 'preempted' / 'training_states').glob('*.state'))
    assert len(states) == 1 and 4 <= states[0] < 400, log[-4000:]
    stopped = states[0]
    assert log.count(f'stopped by SIGTERM after iteration {stopped}') == 2  # the log line and the hint, rank 0's
    hints = [line for line in lines if 'continue with `' in line]
    assert len(hints) == 1 and 'torch.distributed.run --standalone --nproc_per_node=2' in hints[0]
    assert hints[0].rstrip().endswith('--auto_resume`')
    rerun = force('preempted', 400, no_checkpoint, f'train:total_iter={stopped + 2}')
    log = succeeded(torchrun(root, root / 'out_sigterm', STANDALONE, ['--auto_resume', *rerun]))
    assert f'Resuming training from epoch: 0, iter: {stopped}.' in log
    assert re.search(rf'iter:\s+{stopped + 2},', log)


def test_ctrl_c_to_torchrun_piped_into_tee_saves_although_the_pipe_is_gone(root):
    """``torchrun ... | tee log`` and Ctrl-C: tee ends and the agent forwards SIGINT to the workers, whose output
    (the agent's pipe) is broken by then; rank 0 saves all the same, and a rerun continues."""
    no_checkpoint = 'logger:save_checkpoint_freq=400'
    command = worker_command(root / 'out_piped', force('piped', 400, no_checkpoint), STANDALONE, option(root))
    (root / 'out_piped').mkdir()
    read_end, write_end = os.pipe()
    agent = subprocess.Popen(command, cwd=root, env=TEST_ENV, stdout=write_end, stderr=write_end)
    os.close(write_end)
    with os.fdopen(read_end) as tee:
        for line in tee:
            if re.search(r'iter:\s+4,', line):
                break
    agent.send_signal(signal.SIGINT)  # the terminal's Ctrl-C (torchrun starts its workers in their own sessions)
    agent.wait(timeout=120)
    exp = root / 'experiments' / 'piped'
    log = ''.join(path.read_text() for path in exp.glob('train_piped_*.log'))
    stopped = int(re.search(r'stopped by SIGINT after iteration (\d+)', log).group(1))
    assert [int(p.stem) for p in (exp / 'training_states').glob('*.state')] == [stopped], log[-3000:]
    assert 'To continue: `' in log and '--auto_resume`' in log and 'Training failed' not in log
    rerun = force('piped', 400, no_checkpoint, f'train:total_iter={stopped + 1}')
    log = succeeded(torchrun(root, root / 'out_piped', STANDALONE, ['--auto_resume', *rerun]))
    assert f'Resuming training from epoch: 0, iter: {stopped}.' in log


def _thread(target, *args) -> dict:
    result: dict = {}

    def run() -> None:
        try:
            result['value'] = target(*args)
        except Exception as err:  # reported by the test
            result['error'] = err

    result['thread'] = threading.Thread(target=run, daemon=True)
    result['thread'].start()
    return result


def test_fresh_store_skips_the_post_of_a_dead_attempt(monkeypatch):
    """The agent's store still holds the post of the previous attempt's rank 0, whose store is gone: rank 1
    must not take it, but wait for the new rank 0's post; then both meet in the new store."""
    agent = dist.TCPStore('127.0.0.1', 0, 1, True, wait_for_workers=False)
    dead = free_port()
    agent.set('elan_arch/group_store/endpoint', f'127.0.0.1 {dead} 0123abcd')
    monkeypatch.setenv('MASTER_ADDR', '127.0.0.1')
    probed = []
    answers = elastic._answers
    monkeypatch.setattr(elastic, '_answers', lambda host, port: probed.append(port) or answers(host, port))
    deadline = time.monotonic() + 60
    client = dist.TCPStore('127.0.0.1', agent.port, 1, False)
    rank1 = _thread(elastic.fresh_store, client, 1, 2, deadline)
    while dead not in probed:
        time.sleep(0.05)
    assert rank1['thread'].is_alive()  # rejected the stale post, still waiting
    store0 = elastic.fresh_store(dist.TCPStore('127.0.0.1', agent.port, 1, False), 0, 2, deadline)
    rank1['thread'].join(30)
    store1 = rank1['value']
    store0.set('hello', 'from rank 0')
    assert store1.get('hello') == b'from rank 0'
    met = _thread(elastic.meet, store1, 2, deadline, 1)  # rank 1 is a restart, rank 0 is not
    assert elastic.meet(store0, 2, deadline, 0) is True
    met['thread'].join(30)
    assert met['value'] is True


@pytest.mark.parametrize('agent_store', [False, True])
def test_startup_without_its_peer_stops_with_a_clear_error(monkeypatch, agent_store):
    port = free_port()
    if agent_store:  # rank 1 under torchrun: the agent's store answers, rank 0 never posts
        agent = dist.TCPStore('127.0.0.1', 0, 1, True, wait_for_workers=False)
        port = agent.port
    env = dict(RANK='1' if agent_store else '0', WORLD_SIZE='2', MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port),
               ELAN_DIST_START_TIMEOUT='1', TORCHELASTIC_USE_AGENT_STORE=str(agent_store))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ElanError, match=f'start-up of rank {env["RANK"]} of 2 failed within 1 s'):
        elastic.init_process_group('gloo')
    assert not dist.is_initialized()


def test_meeting_says_how_many_processes_came():
    store = dist.TCPStore('127.0.0.1', 0, 1, True, wait_for_workers=False)
    with pytest.raises(TimeoutError, match='only 1 of 3 processes arrived'):
        elastic.meet(store, 3, time.monotonic() + 1, 0)


def test_resume_command_is_the_command_that_was_running(monkeypatch):
    argv = ['train', '-opt', 'options/x.yml', '--launcher', 'pytorch', '--force_yml', 'train:total_iter=9']
    monkeypatch.setenv('TORCHELASTIC_RUN_ID', 'job')
    monkeypatch.setattr(elastic, '_parent_command', lambda: ['torchrun', '--nproc_per_node=8', '-m',
                                                             'elan_arch.cli.basicsr_cmd', *argv])
    assert elastic.resume_command(argv, 'pytorch') == ('torchrun --nproc_per_node=8 -m elan_arch.cli.basicsr_cmd '
                                                       + ' '.join(argv) + ' --auto_resume')
    monkeypatch.delenv('TORCHELASTIC_RUN_ID')
    slurm = ['train', '-opt', 'options/x.yml', '--launcher', 'slurm', '--auto_resume']
    assert elastic.resume_command(slurm, 'slurm') == 'srun basicsr ' + ' '.join(slurm)
    assert elastic.resume_command(['train', '-opt', 'a b.yml'], 'none') == "basicsr train -opt 'a b.yml' --auto_resume"


def test_launcher_command_line_as_typed(monkeypatch):
    assert elastic.as_typed(['/usr/bin/python3', '/usr/local/bin/torchrun', '--nnodes=2', 'x.py']) == [
        'torchrun', '--nnodes=2', 'x.py']
    assert elastic.as_typed(['python', '-m', 'torch.distributed.run', 'x.py']) == [
        'python', '-m', 'torch.distributed.run', 'x.py']
    if not os.path.exists('/proc/self/cmdline'):
        pytest.skip('no /proc')
    monkeypatch.setattr(elastic.os, 'getppid', os.getpid)  # read this process's own command line
    assert 'pytest' in ' '.join(elastic._parent_command())
