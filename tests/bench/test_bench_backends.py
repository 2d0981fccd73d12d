"""``elan bench --backends``: every runtime of the registry in one interleaved run, with differences to PyTorch."""
from __future__ import annotations

import re

import pytest

import elan_arch  # noqa: F401  (before basicsr)
from elan_arch.bench import backends
from elan_arch.bench.backends import BACKENDS, BackendSpec, register_backend
from elan_arch.cli import main


@pytest.fixture
def fake_runtime(monkeypatch):
    """A registered runtime whose Python package is not installed."""
    monkeypatch.setitem(BACKENDS, 'fakert', BackendSpec('FakeRT', lambda *a: None, ('no_such_runtime_pkg',),
                                                        "pip install -e '.[fakert]'"))


def test_backend_table_measures_and_compares_every_runtime(tmp_path, capsys, fake_runtime):
    assert main(['bench', '--backends', 'torch,onnxruntime,fakert', '--size', '20x27', '--runs', '1',
                 '--warmup', '0', '--output-dir', str(tmp_path), '--quiet']) == 0
    table = (tmp_path / 'bench_backends_cpu_x4_20x27.md').read_text()
    assert 'command: `elan bench --backends torch,onnxruntime,fakert --scale 4 --size 20x27' in table
    assert re.search(r'CPU \(.+\), \d+ threads; \d{4}-\d\d-\d\d', table)
    rows = {m.group(1): m.group(2).split(' | ') for m in re.finditer(r'^\| ([^|]+) \| (.+) \|$', table, re.M)}
    torch_row = rows['PyTorch float32 (fast path)']
    assert float(torch_row[0].split()[0]) > 0 and torch_row[2] == '1.00x' and torch_row[3:] == ['0', '0.0000']
    ort = rows['onnxruntime (elan export, dynamic axes)']
    # float32 rounding of another operation order flips an 8-bit rounding now and then, never more
    assert re.fullmatch(r'\d+\.\d\dx', ort[1]) and int(ort[3]) <= 1 and float(ort[4]) < 0.01
    assert rows['FakeRT'][0] == "unavailable: no_such_runtime_pkg not installed (pip install -e '.[fakert]')"
    assert rows['SwinIR-light (PyTorch float32)'][1] == '1.00x'


def test_backend_names_and_options_are_checked(capsys):
    with pytest.raises(SystemExit):
        main(['bench', '--backends', 'torch,tensorrt'])
    assert 'unknown backend(s) tensorrt; choose from torch, torch-bf16, onnxruntime' in capsys.readouterr().err
    assert main(['bench', '--backends', 'torch', '--models', 'elan-light']) == 2
    assert '--backends measures ELAN-light in float32 through each runtime on the CPU: leave out --models' \
        in capsys.readouterr().err


def test_a_runtime_that_fails_is_reported_in_its_row(tmp_path, monkeypatch):
    def broken(net, workdir, threads):
        raise RuntimeError('no kernel for this operation')

    register_backend('broken', BackendSpec('Broken runtime', broken))
    try:
        results, anchor = backends.measure_backends(['torch', 'broken'], _tiny(), _tiny(), (16, 16), 1, 1, 0, False)
    finally:
        del BACKENDS['broken']
    assert results[1].error == 'RuntimeError: no kernel for this operation' and not results[1].latencies
    assert results[0].error is None and len(results[0].latencies) == 1 and anchor.latencies
    assert '| Broken runtime | RuntimeError: no kernel for this operation | n/a |' in \
        backends.markdown_backends(results, anchor, 'setup')


def _tiny():
    from elan_arch import ELAN

    return ELAN(upscale=2, c_elan=15, m_elan=2, n_share=1).eval()
