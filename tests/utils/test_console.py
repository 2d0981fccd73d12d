"""elan_arch/utils/console.py: a closed or broken stdout/stderr loses what is printed, never the run."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from elan_arch.utils.console import SturdyStream, sturdy_console


def test_a_pipe_whose_reader_is_gone_swallows_writes_and_points_at_dev_null():
    read_end, write_end = os.pipe()
    os.close(read_end)
    raw = os.fdopen(write_end, 'w')
    stream = SturdyStream(raw)
    assert stream.write('lost\n') == 5
    stream.flush()
    assert isinstance(stream.broken, BrokenPipeError)
    assert os.path.samestat(os.fstat(raw.fileno()), os.stat(os.devnull))  # C code writing there is safe too
    stream.write('later\n')
    stream.flush()
    raw.close()  # its pending text goes to /dev/null, no error


@pytest.mark.skipif(not os.path.exists('/dev/full'), reason='needs /dev/full')
def test_a_full_disk_and_a_closed_file_are_swallowed_too():
    with open('/dev/full', 'w') as full:
        stream = SturdyStream(full)
        stream.write('x' * 10000)
        stream.flush()
        assert stream.broken is not None and stream.broken.errno == 28
    closed = open(os.devnull, 'w')
    closed.close()
    stream = SturdyStream(closed)
    stream.write('x')
    assert isinstance(stream.broken, ValueError)


def test_the_console_is_restored_and_the_process_exits_with_its_own_status():
    """Without it, Python's last flush of a broken stdout turns any exit status into 120."""
    script = ('import sys\n'
              'from elan_arch.utils.console import sturdy_console\n'
              'with sturdy_console():\n'
              '    for _ in range(1000):\n'
              '        print("x" * 100)\n'
              '    print("to stderr", file=sys.stderr)\n'
              'sys.exit(130)\n')
    proc = subprocess.Popen([sys.executable, '-c', script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before anything is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 130 and 'to stderr' in err and 'BrokenPipeError' not in err


def test_inside_the_console_streams_are_sturdy_and_after_it_the_originals(capsys):
    before = sys.stdout, sys.stderr
    with sturdy_console():
        assert isinstance(sys.stdout, SturdyStream) and isinstance(sys.stderr, SturdyStream)
        print('through')
    assert (sys.stdout, sys.stderr) == before and capsys.readouterr().out == 'through\n'
