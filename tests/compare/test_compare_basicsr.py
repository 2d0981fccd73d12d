"""``elan compare``'s metrics equal ``basicsr test``'s: a real ``basicsr test`` run and ``elan compare`` on the same
images with the same weights give the same SR images (pixel for pixel), the same per-image PSNR/SSIM (basicsr's
functions on basicsr's saved images) and the same averages as basicsr logs them (to the 4 decimals it prints)."""
from __future__ import annotations

import json
import re

import cv2
import numpy as np
import pytest
import torch
import yaml

import elan_arch  # noqa: F401  (before basicsr)
from basicsr.metrics import calculate_psnr, calculate_ssim

from elan_arch.archs.elan_arch import ELAN
from elan_arch.compare.runner import CompareOptions, compare
from elan_arch.compare.specs import parse_model
from elan_arch.prepare.benchmark import prepare_benchmark
from helpers.train import TEST_ENV, ok, run_python

NETWORK = dict(type='ELAN', upscale=4, colors=3, c_elan=15, m_elan=2, n_share=1, r_expand=2,
               window_sizes=[4, 8, 16], img_range=255.)


def photo(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.uniform(0, 255, (h // 8 + 2, w // 8 + 2, 3)).astype(np.float32)
    smooth = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    return np.clip(smooth + rng.normal(0, 6, smooth.shape), 0, 255).astype(np.uint8)


@pytest.mark.slow
def test_metrics_equal_basicsr_test(tmp_path):
    sources = tmp_path / 'Tiny'
    sources.mkdir()
    for i, (h, w) in enumerate([(72, 96), (100, 64), (60, 60)]):
        cv2.imwrite(str(sources / f'p{i}.png'), photo(h, w, i))
    prepare_benchmark(sources, scales=(4, ), progress=False)  # GTmod12/ + LRbicx4/, as for Set5
    torch.manual_seed(3)
    weights = tmp_path / 'net.pth'
    net = ELAN(**{k: v for k, v in NETWORK.items() if k != 'type'})
    for p in net.parameters():  # a network whose output is far from its input: metrics that differ per image
        p.data.add_(torch.randn_like(p) * 0.05)
    torch.save({'params': net.state_dict()}, weights)
    option = tmp_path / 'test_tiny.yml'
    option.write_text(yaml.safe_dump({
        'name': 'tiny', 'model_type': 'ELANModel', 'scale': 4, 'num_gpu': 0, 'manual_seed': 0,
        'datasets': {'test_1': {'name': 'Tiny', 'type': 'PairedImageDataset', 'dataroot_gt': str(sources / 'GTmod12'),
                                'dataroot_lq': str(sources / 'LRbicx4'), 'io_backend': {'type': 'disk'}}},
        'network_g': NETWORK,
        'path': {'pretrain_network_g': str(weights), 'param_key_g': 'params', 'strict_load_g': True},
        'val': {'save_img': True, 'suffix': None, 'metrics': {
            'psnr': {'type': 'calculate_psnr', 'crop_border': 4, 'test_y_channel': True},
            'ssim': {'type': 'calculate_ssim', 'crop_border': 4, 'test_y_channel': True}}}}))
    log = ok(run_python(['-m', 'elan_arch.cli.basicsr_cmd', 'test', '-opt', str(option)], tmp_path, TEST_ENV))
    logged = {m: float(re.search(rf'# {m}: ([\d.]+)', log).group(1)) for m in ('psnr', 'ssim')}
    saved = tmp_path / 'results' / 'tiny' / 'visualization' / 'Tiny'

    for model, out in ((str(weights), 'by_checkpoint'), (str(option), 'by_option_file')):
        outcome = compare(CompareOptions([sources], 4, [parse_model(f'ELAN={model}')], tmp_path / out,
                                         device='cpu', figures=0, quiet=True))
        assert outcome.status == 0, outcome.problems
        results = json.loads((tmp_path / out / 'results.json').read_text())
        test_set = results['sets'][0]
        assert [i['name'] for i in test_set['images']] == ['p0', 'p1', 'p2']
        for img in test_set['images']:
            theirs = cv2.imread(str(saved / f'{img["name"]}_tiny.png'))
            ours = cv2.imread(str(tmp_path / out / img['folder'] / 'ELAN.png'))
            assert np.array_equal(ours, theirs), img['name']
            gt = cv2.imread(str(sources / 'GTmod12' / f'{img["name"]}.png'))
            assert img['metrics']['ELAN']['psnr'] == calculate_psnr(theirs, gt, 4, test_y_channel=True)
            assert img['metrics']['ELAN']['ssim'] == calculate_ssim(theirs, gt, 4, test_y_channel=True)
        for metric in ('psnr', 'ssim'):  # basicsr logs the mean over the images with 4 decimals
            assert abs(test_set['summary']['ELAN'][metric] - logged[metric]) <= 0.5e-4 + 1e-12
        spread = [i['metrics']['ELAN']['psnr'] for i in test_set['images']]
        assert max(spread) - min(spread) > 0.1  # per-image figures that differ, so the comparison means something
