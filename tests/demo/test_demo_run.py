"""The demo's own output (elan_arch/demo/run.py): its progress bar and its last line."""
from __future__ import annotations

import subprocess
import sys

import pytest

from elan_arch.demo import run
from elan_arch.utils.errors import ElanError

LOG = ("print('[epoch:  0, iter:      10, lr:(1.0e-04,)] l_pix: 1.0', flush=True);"
       "print('[epoch:  1, iter:      20, lr:(1.0e-04,)] l_pix: 1.0', flush=True);"
       "print('End of training.', flush=True); raise SystemExit({code})")


@pytest.mark.parametrize('code', [0, 1])
def test_the_training_bar_ends_at_the_last_iteration_of_a_finished_run(monkeypatch, capsys, code):
    """basicsr logs every print_freq (20) iterations: a finished 30-iteration run ends the bar at 30/30, not at
    the last logged 20; a failed one stays where its log stopped."""
    real = subprocess.Popen
    monkeypatch.setattr(subprocess, 'Popen', lambda command, **kw: real([sys.executable, '-c', LOG.format(code=code)],
                                                                        **kw))
    if code:
        with pytest.raises(ElanError, match='failed with exit status 1'):
            run.run_logged(['train', '-opt', 'x.yml'], total_iters=30, env={})
    else:
        run.run_logged(['train', '-opt', 'x.yml'], total_iters=30, env={})
    err = capsys.readouterr().err
    assert ('30/30' in err) == (code == 0) and ('20/30' in err) == (code == 1)


def test_the_last_line_says_the_gain_the_right_way_round():
    assert run.verdict(0.54) == 'ELAN beats bicubic by 0.54 dB average PSNR.'
    assert run.verdict(-1.8) == 'ELAN does NOT beat bicubic: 1.80 dB below it in average PSNR.'
