"""glibc malloc tuning (elan_arch/utils/cpu_tuning.py): fewer page faults for the same training steps."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
import time

import pytest

SCRIPT = '''
import resource, sys, torch
import elan_arch
from elan_arch import ELAN
from elan_arch.utils.cpu_tuning import tune_malloc
tuned = tune_malloc() if sys.argv[1] == 'tuned' else None
torch.set_num_threads(1)
net = ELAN(upscale=4, m_elan=4).train()
x = torch.rand(4, 3, 32, 32)
net(x).sum().backward()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    net.zero_grad()
    net(x).sum().backward()
print(tuned, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
'''


@pytest.mark.slow
@pytest.mark.skipif(platform.system() != 'Linux' or platform.libc_ver()[0] != 'glibc', reason='glibc only')
def test_tuned_malloc_keeps_freed_memory():
    faults = {}
    for mode in ('default', 'tuned'):
        out = subprocess.run([sys.executable, '-c', SCRIPT, mode], capture_output=True, text=True, check=True,
                             timeout=300).stdout.split()
        faults[mode] = int(out[-1])
        if mode == 'tuned':
            assert out[0] == 'True'  # both mallopt calls accepted
    assert faults['tuned'] < faults['default'] / 3, faults


def test_commands_tune_the_process_once_their_arguments_are_parsed(monkeypatch):
    from elan_arch.utils import cpu_tuning
    from elan_arch.cli import basicsr_cmd, main

    calls = []

    def tune() -> None:
        calls.append(1)
        raise RuntimeError('tuned')  # stop before the command runs

    monkeypatch.setattr(cpu_tuning, 'tune_process', tune)
    with pytest.raises(SystemExit):
        main(['--help'])  # nothing to tune for help
    for command in (['prepare', 'check', '--gt', 'a', '--lq', 'b', '--scale', '4'], ['test', '-opt', 'x.yml']):
        with pytest.raises(RuntimeError, match='tuned'):
            (basicsr_cmd.main if command[0] == 'test' else main)(command)
    assert calls == [1, 1]


DENORMALS = '''
import sys, torch
from elan_arch.utils.cpu_tuning import tune_process
tune_process()
torch.set_num_threads(2)
x = torch.full((1 << 20,), 1e-30)
y = x * 1e-10  # 1e-40: subnormal in float32, on every thread of the pool
print(int((y != 0).sum()), int(x.nonzero().shape[0]))
'''


@pytest.mark.slow
@pytest.mark.parametrize('setting', ['', 'keep'])
def test_subnormals_are_flushed_unless_kept(setting):
    import os
    env = dict(os.environ, ELAN_DENORMALS=setting)
    out = subprocess.run([sys.executable, '-c', DENORMALS], capture_output=True, text=True, check=True,
                         timeout=300, env=env).stdout.split()
    nonzero, inputs = int(out[0]), int(out[1])
    assert inputs == 1 << 20  # 1e-30 itself is a normal float
    assert nonzero == (1 << 20 if setting == 'keep' else 0)


def test_cpu_busy_reads_the_share_of_busy_ticks():
    from elan_arch.utils.cpu_tuning import cpu_busy

    def reader(*samples):
        it = iter(samples)
        return lambda: next(it)
    # user, nice, system, idle, iowait: 10% busy, then 60% busy over the interval
    assert not cpu_busy(0, read_ticks=reader([0, 0, 0, 0, 0], [5, 0, 5, 85, 5]))
    assert cpu_busy(0, read_ticks=reader([0, 0, 0, 0, 0], [50, 0, 10, 40, 0]))


@pytest.mark.skipif(not os.path.exists('/proc/stat'), reason='reads /proc/stat')
def test_cpu_busy_sees_processes_spinning_on_every_core():
    from elan_arch.utils.cpu_tuning import cpu_busy

    spinners = [subprocess.Popen([sys.executable, '-c', 'while True: pass']) for _ in range(os.cpu_count() or 1)]
    try:
        time.sleep(0.3)
        assert cpu_busy(0.5)
    finally:
        for proc in spinners:
            proc.kill()
            proc.wait()


@pytest.fixture
def no_policy(monkeypatch):
    """cpu_tuning, with no policy in the environment (which is put back as it was afterwards)."""
    from elan_arch.utils import cpu_tuning

    saved = dict(os.environ)
    for var in ('OMP_WAIT_POLICY', 'OMP_NUM_THREADS', cpu_tuning.CHECKED):
        os.environ.pop(var, None)
    monkeypatch.setattr(os, 'cpu_count', lambda: 2)
    yield cpu_tuning
    os.environ.clear()
    os.environ.update(saved)


def test_wait_policy_is_passive_only_on_a_busy_cpu_and_the_users_wins(no_policy):
    env = no_policy.wait_policy_env({'A': '1'}, busy=lambda: True)
    assert env == {'A': '1', 'OMP_WAIT_POLICY': 'PASSIVE', no_policy.CHECKED: '1'}
    assert no_policy.wait_policy_env({}, busy=lambda: False) == {no_policy.CHECKED: '1'}  # OpenMP's default
    for given in ({'OMP_WAIT_POLICY': 'ACTIVE'}, {'OMP_NUM_THREADS': '1'}, {no_policy.CHECKED: '1'}):
        assert no_policy.wait_policy_env(given, busy=lambda: pytest.fail('looked at the load')) == given


def test_the_policy_is_set_before_torch_loads_and_only_advised_after(no_policy, monkeypatch, capsys):
    """libgomp reads OMP_WAIT_POLICY once, as torch loads: before that the policy is set, after it only advised."""
    monkeypatch.setattr(no_policy, 'cpu_busy', lambda *args, **kwargs: True)
    assert 'torch' in sys.modules  # this test process has loaded it
    assert no_policy.choose_wait_policy('basicsr train') is None
    assert 'OMP_WAIT_POLICY' not in os.environ and 'start it with OMP_WAIT_POLICY=PASSIVE' in capsys.readouterr().err
    monkeypatch.delitem(sys.modules, 'torch')  # as a command is, before it imports torch
    assert no_policy.choose_wait_policy('basicsr train') == 'PASSIVE'
    assert os.environ['OMP_WAIT_POLICY'] == 'PASSIVE'
    assert 'basicsr train: other work keeps the CPU busy, so OpenMP threads wait passively' in capsys.readouterr().err
    del os.environ['OMP_WAIT_POLICY'], os.environ[no_policy.CHECKED]
    monkeypatch.setattr(no_policy, 'cpu_busy', lambda *args, **kwargs: False)
    assert no_policy.choose_wait_policy('basicsr train') is None and 'OMP_WAIT_POLICY' not in os.environ


def test_the_load_sample_leaves_out_the_process_itself():
    from elan_arch.utils.cpu_tuning import LoadSample, cpu_load

    ticks = iter([[100, 0, 0, 100, 0]])
    # 100 busy ticks of 200 in the window, of which this process used 0.5 s (50 ticks at 100 per second)
    start = LoadSample([0, 0, 0, 0, 0], os.times().user + os.times().system - 0.5 * 100 / os.sysconf('SC_CLK_TCK'),
                       time.monotonic())
    assert cpu_load(0, read_ticks=lambda: next(ticks), since=start) == pytest.approx(0.25, abs=0.02)


SPY = '''
import sys
from elan_arch.utils import cpu_tuning
seen = []
cpu_tuning.choose_wait_policy = lambda prog, since=None: seen.append((prog, 'torch' in sys.modules))
from elan_arch.cli import main
sys.argv = ['elan', 'bench', '--train', '--size', '8x8']
code = main()
print(seen, code)
'''


@pytest.mark.slow
def test_commands_choose_the_policy_before_torch_loads_and_help_loads_neither_torch_nor_basicsr():
    out = subprocess.run([sys.executable, '-c', SPY], capture_output=True, text=True, timeout=300)
    assert out.stdout.split('\n')[-2] == "[('elan bench', False)] 2", out.stdout + out.stderr
    for argv in (['--help'], ['prepare', '--help']):
        out = subprocess.run([sys.executable, '-X', 'importtime', '-m', 'elan_arch', *argv], capture_output=True,
                             text=True, timeout=120)
        loaded = {line.rsplit('|', 1)[-1].strip() for line in out.stderr.splitlines()}
        assert out.returncode == 0 and 'elan_arch.cli' in loaded and not {'torch', 'basicsr'} & loaded, argv


@pytest.mark.slow
def test_a_command_on_a_busy_cpu_waits_passively_without_restarting(tmp_path):
    """End to end: `elan bench` on a CPU kept busy by spinning processes chooses the policy once, in place."""
    from elan_arch.utils import cpu_tuning

    env = {k: v for k, v in os.environ.items() if k not in ('OMP_WAIT_POLICY', 'OMP_NUM_THREADS', cpu_tuning.CHECKED)}
    spinners = [subprocess.Popen([sys.executable, '-c', 'while True: pass']) for _ in range(os.cpu_count() or 1)]
    try:
        time.sleep(0.3)
        out = subprocess.run([sys.executable, '-m', 'elan_arch', 'bench', '--train', '--size', '8x8'], env=env,
                             capture_output=True, text=True, timeout=300, cwd=tmp_path)
    finally:
        for proc in spinners:
            proc.kill()
            proc.wait()
    assert out.returncode == 2 and out.stderr.count('wait passively') == 1, out.stderr
    assert 'restart' not in out.stderr and '--size 8x8 is the input of the inference benchmark' in out.stderr
