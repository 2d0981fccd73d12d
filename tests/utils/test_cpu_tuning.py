"""glibc malloc tuning (elan_arch/utils/cpu_tuning.py): fewer page faults for the same training steps."""
from __future__ import annotations

import platform
import subprocess
import sys

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


def test_commands_tune_the_process_first(monkeypatch):
    from elan_arch.utils import cpu_tuning
    from elan_arch.cli import basicsr_cmd, main

    calls = []
    monkeypatch.setattr(cpu_tuning, 'tune_process', lambda: calls.append(1))
    with pytest.raises(SystemExit):
        main(['--help'])
    with pytest.raises(SystemExit):
        basicsr_cmd.main(['--help'])
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
