"""``elan bench`` on a tiny input: the table's counts against independent numbers, the files it writes."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List

import cv2
import pytest
import torch

import elan_arch  # noqa: F401  (before basicsr)
from elan_arch.archs import window_ops
from elan_arch.bench.training import make_step
from elan_arch.cli import main


def edsr_baseline_flops(h: int, w: int) -> int:
    """FLOPs (2 per multiply-add) of BasicSR's EDSR baseline x4 on an h x w input, all 3x3 convs.

    head 3->64, 16 blocks x 2 + conv_after_body 64->64, upsampler 64->256 at 1x and at 2x, conv_last 64->3 at 4x.
    """
    macs_per_lr_pixel = 9 * (3 * 64 + 33 * 64 * 64 + 64 * 256 + 4 * 64 * 256 + 16 * 64 * 3)
    return 2 * macs_per_lr_pixel * h * w


def elan_light_flops(pixels: int, sharing_recomputes: bool) -> int:
    """FLOPs (2 per multiply-add) of ELAN-light x4 on ``pixels`` LR pixels (a multiple of 16 each way).

    Per pixel: sub_mean 3->3; head 3x3 3->60; 24 LFEs (depthwise 3x3 shift of 60, 60->120, shift of 120,
    120->60); 12 computing GMSAs (60->120, q q^T and maps @ v with 20 channels per group over windows of
    4x4, 8x8 and 16x16 tokens, 60->60); 12 sharing ones (60->60, maps @ v, 60->60; q q^T again where
    the maps are recomputed from the shared queries); tail 3x3 60->48; add_mean 3->3 at 16 HR pixels.
    """
    c, tokens = 60, 16 + 64 + 256
    lfe = 2 * 9 * c + 2 * c * 2 * c + 2 * 9 * 2 * c + 2 * 2 * c * c
    computing = 2 * c * 2 * c + 2 * 2 * 20 * tokens + 2 * c * c
    sharing = 2 * c * c + 2 * 20 * tokens * (2 if sharing_recomputes else 1) + 2 * c * c
    per_pixel = 18 + 2 * 9 * 3 * c + 24 * lfe + 12 * computing + 12 * sharing + 2 * 9 * c * 48 + 18 * 16
    return per_pixel * pixels


def elan_light_training_flops(pixels: int) -> int:
    """FLOPs of one forward + backward of ELAN-light x4's reference arithmetic on ``pixels`` LR pixels (a multiple
    of 16 each way): :func:`elan_light_flops`' terms, each backward 2x its forward for the products with both
    operands trained (1x1 convs, tail, attention), 1x for an input gradient alone (the fixed shifts and
    add_mean) or a weight gradient alone (head: the image needs none), none for sub_mean."""
    c, tokens = 60, 16 + 64 + 256
    shifts = 24 * (2 * 9 * c + 2 * 9 * 2 * c)
    linears = 24 * 2 * (2 * c * 2 * c) + 12 * (2 * c * 2 * c + 2 * c * c) + 12 * (2 * c * c + 2 * c * c)
    attention = 12 * (2 * 2 * 20 * tokens) + 12 * (2 * 20 * tokens)
    per_pixel = 18 + 2 * (2 * 9 * 3 * c) + 2 * shifts + 3 * (linears + attention + 2 * 9 * c * 48) + 2 * 18 * 16
    return per_pixel * pixels


def table_rows(table: str) -> Dict[str, List[str]]:
    """A markdown table's rows: first cell -> the other cells."""
    return {m.group(1): m.group(2).split(' | ') for m in re.finditer(r'^\| ([^|]+) \| (.+) \|$', table, re.M)}


def fail_reference_path(monkeypatch, call: int, switch: str) -> Dict[str, int]:
    """Make ELAN's reference arithmetic (``switch``, ``fast_inference`` or ``fast_training``, False) raise a
    pretend out-of-memory error on its ``call``-th forward; returns the live count of its forwards."""
    calls = {'ref': 0}
    forward = elan_arch.ELAN.forward

    def flaky(self, x):
        if not getattr(self, switch):
            calls['ref'] += 1
            if calls['ref'] == call:
                raise RuntimeError('CUDA out of memory. Tried to allocate 2 GiB | (pretend)\nsecond line')
        return forward(self, x)

    monkeypatch.setattr(elan_arch.ELAN, 'forward', flaky)
    return calls


@pytest.mark.slow
def test_bench_writes_table_and_chart_with_the_right_counts(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv('ELAN_CPU_ATTENTION', 'sdpa')  # the fast path's FLOPs below: sharing GMSAs recompute q q^T
    args = ['bench', '--size', '20x27', '--runs', '2', '--warmup', '0', '--models', 'elan-light', 'elan-light-ref',
            'swinir-light', 'edsr', '--output-dir', str(tmp_path), '--quiet']
    assert main(args) == 0
    printed = capsys.readouterr().out
    table = (tmp_path / 'bench_cpu_x4_20x27.md').read_text()
    assert table in printed
    rows = table_rows(table)
    # parameters: docs/elan_spec.md's counts for ELAN-light x4 and BasicSR's SwinIR-light x4; EDSR baseline x4
    assert rows['ELAN-light'][0] == '601,488'
    assert rows['SwinIR-light'][0] == '929,628'
    assert rows['EDSR-baseline'][0] == '1,517,571'
    assert float(rows['EDSR-baseline'][1]) == pytest.approx(edsr_baseline_flops(20, 27) / 1e9, abs=0.05)
    # ELAN pads 20x27 to 32x32; the fast path's sharing GMSAs recompute their maps
    assert float(rows['ELAN-light'][1]) == pytest.approx(elan_light_flops(32 * 32, True) / 1e9, abs=0.05)
    assert float(rows['ELAN-light (reference path)'][1]) == pytest.approx(elan_light_flops(32 * 32, False) / 1e9,
                                                                          abs=0.05)
    assert rows['SwinIR-light'][3] == '1.00x'
    for cells in rows.values():
        if cells[0][0].isdigit():
            assert float(cells[2].split()[0]) > 0 and cells[3].endswith('x') and float(cells[4]) >= 0
    assert '20x27' in table and 'elan bench --scale 4 --size 20x27' in table
    chart = cv2.imread(str(tmp_path / 'bench_cpu_x4_20x27.png'))
    assert chart is not None and chart.shape[0] > 200 and chart.shape[1] > 600 and chart.std() > 10
    assert main(args) == 2  # results are not replaced without --force
    assert 'already exists; pass --force' in capsys.readouterr().err


@pytest.mark.parametrize('fast, attention', [(True, 'sdpa'), (True, 'maps'), (True, 'auto'), (False, 'auto')])
def test_flops_count_what_each_path_executes(fast, attention, monkeypatch):
    """The fast path's oneDNN matrix products and CPU attention are counted (they counted nothing before):
    both paths against the formula; the fast one's sharing GMSAs recompute q q^T with SDPA and reuse the maps
    otherwise; with the form chosen by timing, the count is one of the two, never the timing's own work."""
    from elan_arch.archs import window_ops
    from elan_arch.bench.flops import count_flops

    monkeypatch.setenv(window_ops.ATTENTION_ENV, attention)
    monkeypatch.setattr(window_ops, '_CPU_FORMS', {})  # nothing timed yet
    net = elan_arch.ELAN(upscale=4).eval()
    net.fast_inference = fast
    x = torch.rand(1, 3, 16, 32)
    with torch.inference_mode():
        flops = count_flops(lambda: net(x))
    if attention == 'auto' and fast:
        per_form = {sdpa: elan_light_flops(16 * 32, sharing_recomputes=sdpa) for sdpa in (True, False)}
        assert flops in set(per_form.values()) or min(per_form.values()) < flops < max(per_form.values())
    else:
        assert flops == elan_light_flops(16 * 32, sharing_recomputes=fast and attention == 'sdpa')


def test_bench_reports_a_failing_model_and_measures_the_others(tmp_path, capsys, monkeypatch):
    """Inference: a model that fails in its timing rounds (here the reference path 'runs out of memory' on its
    third call) gets its error in its row and is left out of the chart; the others are measured; exit 1."""
    calls = fail_reference_path(monkeypatch, 3, 'fast_inference')
    args = ['bench', '--size', '16x16', '--runs', '2', '--warmup', '1', '--models', 'elan-light', 'elan-light-ref',
            'swinir-light', '--output-dir', str(tmp_path), '--quiet']
    assert main(args) == 1
    table = (tmp_path / 'bench_cpu_x4_16x16.md').read_text()
    rows = table_rows(table)
    assert rows['ELAN-light (reference path)'][1:] == [
        'n/a', 'failed: RuntimeError: CUDA out of memory. Tried to allocate 2 GiB / (pretend)', 'n/a', 'n/a']
    assert float(rows['ELAN-light'][3].rstrip('x')) > 0 and float(rows['SwinIR-light'][2].split()[0]) > 0
    assert calls['ref'] == 3 and (tmp_path / 'bench_cpu_x4_16x16.png').stat().st_size > 0
    assert 'ELAN-light (reference path) failed' in capsys.readouterr().out


@pytest.mark.parametrize('args,message', [
    (['--size', '20by27'], "--size '20by27': expected HEIGHTxWIDTH"),
    (['--runs', '0'], '--runs must be >= 1'),
    pytest.param(['--device', 'cuda:0', '--half'], '--device cuda:0: no CUDA device',
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason='a CUDA device is present')),
    (['--device', 'cpu', '--models', 'elan-light', 'elan-light-fused'],
     '--models elan-light-fused: cannot run the fused attention kernels: they need a CUDA device (here: cpu)'),
    (['--device', 'cpu', '--train', '--models', 'elan-fused'], '--models elan-fused: cannot run the fused attention'),
    (['--device', 'cpu', '--train', '--size', '64x64'], '--size 64x64 is the input of the inference benchmark; '
     '--train times batches of square LR patches: use --patch N'),
])
def test_bench_refuses_bad_options(tmp_path, capsys, args, message):
    assert main(['bench', '--output-dir', str(tmp_path), *args]) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_swinir_adapter_runs_basicsr_swinir_in_half_dtype():
    # BasicSR's SwinIR adds a float32 mask to its attention: with half weights alone the next matmul
    # fails on mixed dtypes (the failure `elan bench --half` hit on a GPU); bfloat16 shows it on CPU
    from elan_arch.bench.models import build_model

    net = build_model('swinir-light', 4).to(torch.bfloat16)
    x = torch.rand(1, 3, 12, 20).to(torch.bfloat16)
    with torch.inference_mode():
        with pytest.raises(RuntimeError, match='dtype'):
            net.net(x[..., :8, :16])
        full = net.float()(x.float())
        half = net.to(torch.bfloat16)(x)
    assert half.dtype == torch.bfloat16 and half.shape == (1, 3, 48, 80)
    assert (half.float() - full).abs().max() < 0.1


def test_bench_train_table_and_loader(tmp_path, capsys, monkeypatch):
    from helpers.train import TRAIN_OPT, demo_root

    monkeypatch.chdir(demo_root(tmp_path / 'demo'))  # the option file's dataroots are relative
    args = ['bench', '--train', '--batch', '2', '--patch', '16', '--runs', '2', '--warmup', '1', '--models',
            'elan-light', 'elan-light-ref', 'swinir-light', '--opt', TRAIN_OPT, '--loader-batches', '3',
            '--output-dir', str(tmp_path / 'out'), '--quiet']
    assert main(args) == 0
    table = (tmp_path / 'out' / 'bench_train_cpu_x4_b2_p16.md').read_text()
    assert table in capsys.readouterr().out
    rows = table_rows(table)
    assert rows['ELAN-light'][0] == rows['ELAN-light (reference path)'][0] == '601,488'
    # both paths are rated on the reference arithmetic's FLOPs: batch 2 of 16x16 LR pixels
    gflop = elan_light_training_flops(2 * 16 * 16) / 1e9
    assert float(rows['ELAN-light'][1]) == float(rows['ELAN-light (reference path)'][1])
    assert float(rows['ELAN-light'][1]) == pytest.approx(gflop, abs=0.05)
    assert float(rows['SwinIR-light'][1]) > 0
    step = float(rows['ELAN-light'][2].split()[0])
    assert step > 0 and float(rows['ELAN-light'][3]) == pytest.approx(2 / (step / 1e3), rel=0.02, abs=0.06)
    assert float(rows['ELAN-light'][4]) == pytest.approx(gflop / step, rel=0.05, abs=0.006)  # GFLOP/ms = TFLOP/s
    ratio = float(rows['ELAN-light'][5].rstrip('x'))
    ref_step = float(rows['ELAN-light (reference path)'][2].split()[0])
    assert ratio == pytest.approx(ref_step / step, rel=0.02) and rows['SwinIR-light'][5] == 'n/a'
    loader = re.search(r'Data loader \(demo, HR patch 128, batch 8, 1 worker, 3 batches\): \*\*([\d.]+) samples/s',
                       table)
    assert loader and float(loader.group(1)) > 0


def test_bench_train_compile_mode(tmp_path, monkeypatch):
    """``elan bench --train --compile MODE`` times the steps with the forward through torch.compile (recorded
    here instead of compiling), says so, and writes its own table file."""
    compiled = []

    def record(net, **kwargs):
        compiled.append((type(net).__name__, kwargs))
        return net

    monkeypatch.setattr(torch, 'compile', record)
    args = ['bench', '--train', '--batch', '1', '--patch', '16', '--runs', '1', '--warmup', '0', '--models',
            'elan-light', 'swinir-light', '--compile', 'max-autotune', '--output-dir', str(tmp_path), '--quiet']
    assert main(args) == 0
    assert compiled == [('ELAN', {'dynamic': False, 'mode': 'max-autotune'}),
                        ('PadToMultiple', {'dynamic': False, 'mode': 'max-autotune'})]
    table = (tmp_path / 'bench_train_cpu_compile_x4_b1_p16.md').read_text()
    assert 'forward under torch.compile (max-autotune) as train.compile' in table and '--compile max-autotune' in table


def test_step_flops_counts_the_reference_arithmetic_and_restores_the_net():
    from elan_arch.bench.training import step_flops

    net = elan_arch.ELAN(upscale=4, fast_training=True, fused_attention=True)
    assert step_flops(net, 2, 16, 4, torch.device('cpu')) == elan_light_training_flops(2 * 16 * 16)
    assert net.fast_training is True and net.fused_attention is True
    assert all(p.grad is None for p in net.parameters())


def test_bench_train_reports_a_failing_model_and_measures_the_others(tmp_path, capsys, monkeypatch):
    """A model whose step fails (here the reference arithmetic 'runs out of memory' in its second step, after the
    FLOP count's forward) gets its error in its row and no more steps; the others are measured; the table is
    written; exit status 1."""
    calls = fail_reference_path(monkeypatch, 3, 'fast_training')
    args = ['bench', '--train', '--batch', '1', '--patch', '16', '--runs', '2', '--warmup', '1', '--models',
            'elan-light', 'elan-light-ref', '--output-dir', str(tmp_path), '--quiet']
    assert main(args) == 1
    table = (tmp_path / 'bench_train_cpu_x4_b1_p16.md').read_text()
    rows = table_rows(table)
    assert rows['ELAN-light (reference path)'][2:] == [
        'failed: RuntimeError: CUDA out of memory. Tried to allocate 2 GiB / (pretend)', 'n/a', 'n/a', 'n/a']
    assert float(rows['ELAN-light'][2].split()[0]) > 0 and rows['ELAN-light'][5] == 'n/a'
    assert calls['ref'] == 3 and 'ELAN-light (reference path) failed: RuntimeError' in capsys.readouterr().out


def test_bench_train_refuses_a_missing_option_file(tmp_path, capsys):
    assert main(['bench', '--train', '--opt', str(tmp_path / 'nope.yml'), '--output-dir', str(tmp_path)]) == 2
    assert 'nope.yml: no such option file' in capsys.readouterr().err


def test_train_step_floor_script_runs_and_restores_the_attention(monkeypatch, capsys):
    """scripts/train_step_floor.py (the README's 'why not 2x' table) runs end to end on a tiny step; its
    attention-free step runs no window attention, and the real attention is back afterwards."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / 'scripts'))
    import train_step_floor

    real, calls = window_ops.window_attention, []
    monkeypatch.setattr(window_ops, 'window_attention', lambda *a, **k: calls.append(1) or real(*a, **k))
    counted = window_ops.window_attention
    step = make_step(elan_arch.ELAN(upscale=4, m_elan=2).train(), 1, 16, 4, torch.device('cpu'), None)
    step()
    assert len(calls) == 6  # one ELAB: a computing and a sharing GMSA, 3 groups each
    train_step_floor.without_attention(step)()
    assert len(calls) == 6 and window_ops.window_attention is counted
    monkeypatch.undo()

    train_step_floor.main(['--batch', '1', '--patch', '16', '--runs', '1', '--threads', '1', '--no-tune'])
    rows = dict(re.findall(r'^\| ([^|]+?) \| ([\d.]+)x? \|$', capsys.readouterr().out, re.M))
    assert {'fast step (median of 1)', 'reference step (median of 1)',
            'fast step with window attention as the identity (median of 1)'} <= set(rows)
    assert float(rows['reference / that: the most any attention kernel can bring']) > 0
    assert window_ops.window_attention is real
