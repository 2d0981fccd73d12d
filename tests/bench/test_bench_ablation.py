"""``elan bench --ablation``: every ablation variant of ELAN-light next to ELAN-light (both paths) and
SwinIR-light, in one table with both speed-up columns; counts checked against independent numbers."""
from __future__ import annotations

import re
from typing import Dict, List

import pytest
import torch

import elan_arch  # noqa: F401  (before basicsr)
from elan_arch.archs.elan_arch import ELAN, ELAN_ABLATIONS, ELAN_VARIANTS
from elan_arch.bench import inference
from elan_arch.bench.models import ABLATION_KEYS, ABLATION_MODELS, MODELS, OPTIONAL_MODELS, build_model
from elan_arch.cli import main


def table_rows(table: str) -> Dict[str, List[str]]:
    """A markdown table's rows: first cell -> the other cells."""
    return {m.group(1): m.group(2).split(' | ') for m in re.finditer(r'^\| ([^|]+) \| (.+) \|$', table, re.M)}


def test_every_ablation_is_a_model_on_the_reference_arithmetic():
    assert sorted(ABLATION_KEYS.values()) == sorted(ELAN_ABLATIONS)
    assert ABLATION_MODELS[:3] == ['swinir-light', 'elan-light', 'elan-light-ref']
    assert set(ABLATION_KEYS) <= set(OPTIONAL_MODELS)  # the default table is unchanged
    for key, name in ABLATION_KEYS.items():
        net = build_model(key, 4)
        assert not net.fast_inference and not net.fast_training and not net.training
        expected = ELAN(upscale=4, **{**ELAN_VARIANTS['ELAN-light'], **ELAN_ABLATIONS[name]})
        assert net.state_dict().keys() == expected.state_dict().keys()
        assert name in MODELS[key]


@pytest.mark.slow
def test_bench_ablation_table(tmp_path, capsys):
    args = ['bench', '--ablation', '--size', '16x20', '--runs', '1', '--warmup', '0', '--output-dir', str(tmp_path),
            '--quiet']
    assert main(args) == 0
    table = (tmp_path / 'bench_ablation_cpu_x4_16x20.md').read_text()
    assert table in capsys.readouterr().out
    assert 'speed-up vs SwinIR-light | speed-up vs ELAN-light (reference path) |' in table
    assert 'elan bench --ablation --scale 4 --size 16x20' in table and 'torch ' in table
    assert re.search(r'; 20\d\d-\d\d-\d\d;', table)
    rows = table_rows(table)
    assert len([name for name in rows if name.startswith('ELAN-light')]) == 2 + len(ELAN_ABLATIONS)
    for key in ABLATION_MODELS:
        cells = rows[MODELS[key]]
        expected = ELAN(upscale=4, **{**ELAN_VARIANTS['ELAN-light'], **ELAN_ABLATIONS.get(ABLATION_KEYS.get(key), {})})
        if key.startswith('elan'):
            assert cells[0] == f'{sum(p.numel() for p in expected.parameters()):,}'
        assert cells[3].endswith('x') and cells[4].endswith('x') and float(cells[2].split()[0]) > 0
    assert rows['SwinIR-light'][3] == '1.00x' and rows['ELAN-light (reference path)'][4] == '1.00x'
    assert (tmp_path / 'bench_ablation_cpu_x4_16x20.png').stat().st_size > 0


def test_ablation_flops_differ_by_what_each_variant_changes():
    """Reference-arithmetic FLOPs (2 per multiply-add) on a 16x32 input (no padding for any window): without
    the shift, the 24 LFEs lose their depthwise 3x3 shifts (60 and 120 channels); with one 16x16 window all
    channels attend over 256 tokens; sa adds the K projection (60 more outputs of each computing GMSA's
    projection; LayerNorm and the 1/sqrt(d) scaling are not products); conv3x3 has 9 taps per 1x1 weight and
    no shifts."""
    from elan_arch.bench.flops import count_flops

    x = torch.rand(1, 3, 16, 32)
    pixels = 16 * 32

    def flops(key: str) -> int:
        net = build_model(key, 4)
        with torch.inference_mode():
            return count_flops(lambda: net(x))

    reference = flops('elan-light-ref')
    assert reference - flops('elan-light-no-shift') == 24 * (2 * 9 * 60 + 2 * 9 * 120) * pixels
    # per pixel, over the groups: computing GMSAs q q^T and maps @ v (2 * 2 * channels * tokens), sharing ones
    # maps @ v (2 * channels * tokens); 12 of each. Default: 3 groups of 20 channels over 16, 64 and 256 tokens;
    # window16: one group of all 60 channels over 256 tokens.
    def attention(groups):
        return sum(12 * 2 * 2 * c * t + 12 * 2 * c * t for c, t in groups)
    assert flops('elan-light-window16') - reference == (attention([(60, 256)]) - attention(
        [(20, 16), (20, 64), (20, 256)])) * pixels
    assert flops('elan-light-sa') - reference == 12 * 2 * 60 * 60 * pixels
    assert flops('elan-light-conv3x3') - reference == 24 * 8 * (2 * 60 * 120 * 2) * pixels - 24 * (
        2 * 9 * 60 + 2 * 9 * 120) * pixels


@pytest.mark.parametrize('args,message', [
    (['--ablation', '--models', 'elan-light'], '--ablation measures its own set of models at inference: leave out '
                                               '--models'),
    (['--ablation', '--train'], 'leave out --train'),
])
def test_bench_ablation_refuses_other_model_choices(tmp_path, capsys, args, message):
    assert main(['bench', '--output-dir', str(tmp_path), *args]) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_bench_ablation_default_size_is_the_papers(tmp_path, monkeypatch, capsys):
    seen = {}

    def fake_measure(keys, scale, size, *args, **kwargs):
        seen.update(keys=keys, size=size)
        return []

    monkeypatch.setattr(inference, 'measure', fake_measure)
    assert main(['bench', '--ablation', '--output-dir', str(tmp_path), '--quiet']) == 0
    assert seen == {'keys': ABLATION_MODELS, 'size': (180, 320)}
    assert (tmp_path / 'bench_ablation_cpu_x4_180x320.md').is_file()
    assert main(['bench', '--models', 'elan-light', '--output-dir', str(tmp_path), '--quiet']) == 0
    assert seen == {'keys': ['elan-light'], 'size': (176, 320)}
