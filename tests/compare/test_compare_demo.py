"""The page ``make demo`` ends with (:func:`elan_arch.compare.demo.demo_page`): bicubic vs the trained network on
the test option file's sets, the demo's network changes (``--variant``/``--set``) applied to ``network_g``."""
from __future__ import annotations

import json
import re

import cv2
import numpy as np
import pytest
import torch
import yaml

import elan_arch  # noqa: F401  (before basicsr)

from elan_arch.archs.elan_arch import ELAN
from elan_arch.compare.demo import demo_page
from elan_arch.prepare.benchmark import prepare_benchmark
from elan_arch.utils.errors import ElanError


def test_demo_page_with_a_variant(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    photos = tmp_path / 'datasets' / 'demo' / 'val'
    photos.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ('a', 'b'):
        small = rng.uniform(0, 255, (8, 10, 3)).astype(np.float32)
        cv2.imwrite(str(photos / f'{name}.png'), cv2.resize(small, (60, 48)).clip(0, 255).astype(np.uint8))
    prepare_benchmark(photos, scales=(4, ), progress=False)
    network_g = dict(type='ELAN', upscale=4, c_elan=15, m_elan=2, n_share=1, window_sizes=[4, 8, 16])
    test_opt = {'name': 'test_demo', 'scale': 4, 'network_g': network_g, 'path': {'param_key_g': 'params'},
                'datasets': {'test_1': {'name': 'demo_val', 'type': 'PairedImageDataset',
                                        'io_backend': {'type': 'disk'}, 'dataroot_gt': 'datasets/demo/val/GTmod12',
                                        'dataroot_lq': 'datasets/demo/val/LRbicx4'}}}
    option_file = tmp_path / 'test.yml'
    option_file.write_text(yaml.safe_dump(test_opt))
    torch.manual_seed(0)
    weights = tmp_path / 'net_g_latest.pth'  # the no_shift variant: its weights load only into that network
    torch.save({'params': ELAN(c_elan=15, m_elan=2, lfe='conv1x1').state_dict()}, weights)
    with pytest.raises(ElanError, match='fewer than two models'):  # ELAN-light with shift convolutions
        demo_page(option_file, test_opt, {}, weights, tmp_path / 'wrong')
    assert re.search(r'net_g_latest.pth: its weights do not fit ELAN .*Missing key.*shift_conv',
                     capsys.readouterr().err)
    assert not (tmp_path / 'wrong').exists()
    page = demo_page(option_file, test_opt, {'lfe': 'conv1x1'}, weights, tmp_path / 'pictures' / 'compare',
                     'ELAN-light x4 no_shift')
    assert page == tmp_path / 'pictures' / 'compare' / 'index.html' and page.is_file()
    results = json.loads((page.parent / 'results.json').read_text())
    assert [m['name'] for m in results['models']] == ['bicubic', 'ELAN-light x4 no_shift']
    assert results['sets'][0]['name'] == 'demo_val'
    assert [i['name'] for i in results['sets'][0]['images']] == ['a', 'b']
    assert len(list((page.parent / 'figures').glob('*.png'))) == 2
    demo_page(option_file, test_opt, {'lfe': 'conv1x1'}, weights, tmp_path / 'pictures' / 'compare')  # replaced
