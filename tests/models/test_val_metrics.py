"""Validation without ground truth: ``basicsr test`` (and training's validation) on real low-resolution photos
with NIQE beside a paired set with PSNR; LPIPS only when its package and weights are in place."""
from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

import elan_arch  # noqa: F401  (before basicsr)
from elan_arch.models import val_metrics
from elan_arch.utils.errors import ElanError
from helpers.data import photo_like, reference_lr, write
from helpers.train import TEST_ENV, ok, run_python

REPO = Path(__file__).resolve().parents[2]
NETWORK = {'type': 'ELAN', 'upscale': 4, 'colors': 3, 'c_elan': 24, 'm_elan': 2, 'n_share': 0, 'r_expand': 2,
           'window_sizes': [4, 8, 16], 'img_range': 255.}


def test_which_metrics_need_ground_truth():
    assert val_metrics.needs_ground_truth({'type': 'calculate_psnr', 'crop_border': 4})
    assert val_metrics.needs_ground_truth({'type': 'calculate_ssim', 'crop_border': 4})
    assert not val_metrics.needs_ground_truth({'type': 'calculate_niqe', 'crop_border': 4})
    metrics = {'psnr': {'type': 'calculate_psnr', 'crop_border': 4}, 'niqe': {'type': 'calculate_niqe',
                                                                             'crop_border': 4}}
    assert list(val_metrics.metrics_without_ground_truth(metrics)) == ['niqe']


def test_basicsr_test_of_real_photos_and_a_paired_set(tmp_path):
    """One option file, two sets: real LQ photos (SingleImageDataset: NIQE only, PSNR skipped and said so) and a
    paired set (PSNR and NIQE); the logged figures equal basicsr's metrics recomputed on the saved images.
    basicsr 1.4.2 alone stops at the first set with ``calculate_psnr() missing ... 'img2'``."""
    from basicsr.archs import build_network
    from basicsr.metrics import calculate_niqe, calculate_psnr

    torch.manual_seed(0)
    net = build_network(dict(NETWORK))
    torch.save({'params': net.state_dict()}, tmp_path / 'net.pth')
    gts = [photo_like(256, 256, 1), photo_like(256, 320, 2)]
    for index, gt in enumerate(gts):
        write(tmp_path / 'GT' / f'p{index}.png', gt)
        write(tmp_path / 'LQ' / f'p{index}.png', reference_lr(gt, 4))
    opt = {'name': 'realworld_eval', 'model_type': 'ELANModel', 'scale': 4, 'num_gpu': 0, 'manual_seed': 0,
           'datasets': {'test_1': {'name': 'real_lq', 'type': 'SingleImageDataset', 'dataroot_lq': 'LQ',
                                   'io_backend': {'type': 'disk'}},
                        'test_2': {'name': 'pairs', 'type': 'PairedImageDataset', 'dataroot_gt': 'GT',
                                   'dataroot_lq': 'LQ', 'io_backend': {'type': 'disk'}}},
           'network_g': NETWORK, 'path': {'pretrain_network_g': 'net.pth', 'param_key_g': 'params',
                                          'strict_load_g': True},
           'val': {'save_img': True, 'suffix': None,
                   'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': 4, 'test_y_channel': True},
                               'niqe': {'type': 'calculate_niqe', 'crop_border': 4, 'better': 'lower'}}}}
    (tmp_path / 'test.yml').write_text(yaml.safe_dump(opt))
    out = ok(run_python(['-m', 'elan_arch.cli.basicsr_cmd', 'test', '-opt', 'test.yml'], tmp_path, TEST_ENV))
    assert 'Validation set real_lq has no ground truth (SingleImageDataset): psnr skipped there, niqe computed' in out
    logged = {name: dict(re.findall(r'# (\w+): ([\d.]+)', block))
              for name, block in re.findall(r'Validation (\w+)\n((?:\s+# \w+: [\d.]+.*\n?)+)', out)}
    assert list(logged['real_lq']) == ['niqe'] and sorted(logged['pairs']) == ['niqe', 'psnr']
    results = tmp_path / 'results' / 'realworld_eval' / 'visualization'
    for name in ('real_lq', 'pairs'):
        srs = [cv2.imread(str(results / name / f'p{i}_realworld_eval.png')) for i in range(2)]
        niqe = np.mean([calculate_niqe(sr, 4) for sr in srs])
        assert float(logged[name]['niqe']) == pytest.approx(niqe, abs=1e-4)
    psnr = np.mean([calculate_psnr(sr, gt, 4, test_y_channel=True) for sr, gt in zip(srs, gts)])
    assert float(logged['pairs']['psnr']) == pytest.approx(psnr, abs=1e-4)


def test_lpips_says_what_to_install_and_where_the_weights_go(monkeypatch, tmp_path):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    monkeypatch.setattr(val_metrics, '_LPIPS', {})
    img = photo_like(64, 64, 0)
    expected = str(tmp_path / 'torch' / 'hub' / 'checkpoints' / 'alexnet-owt-7be5be79.pth')
    assert str(val_metrics.lpips_weights_path()) == expected
    try:
        import lpips  # noqa: F401
    except ImportError:
        with pytest.raises(ElanError, match=r'needs the lpips package: pip install lpips, then the AlexNet weights '
                                            r'.*copy it to ' + re.escape(expected)):
            val_metrics.calculate_lpips(img, img, 4)
        return
    with pytest.raises(ElanError, match=r'the AlexNet weights are not at ' + re.escape(expected) +
                                        r'; .*download https://download.pytorch.org/models/alexnet-owt-7be5be79\.pth'):
        val_metrics.calculate_lpips(img, img, 4)


def test_lpips_with_the_package_and_weights_in_place(monkeypatch, tmp_path):
    """With ``lpips`` installed and an AlexNet checkpoint where torchvision looks (here one of random weights:
    the real one cannot be downloaded here), the metric runs offline: 0 for equal images, more for noise."""
    pytest.importorskip('lpips')
    import torchvision

    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    monkeypatch.setattr(val_metrics, '_LPIPS', {})
    path = val_metrics.lpips_weights_path()
    path.parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.alexnet().state_dict(), path)
    img = photo_like(64, 64, 0)
    noisy = np.clip(img + np.random.default_rng(0).normal(0, 20, img.shape), 0, 255).astype(np.uint8)
    assert val_metrics.calculate_lpips(img, img, 4) == pytest.approx(0, abs=1e-6)
    assert val_metrics.calculate_lpips(noisy, img, 4) > 1e-3


def test_the_shipped_real_photo_test_file(tmp_path):
    """options/realworld/test_ELAN_light_realworld_x4.yml on a folder of photos (paths changed only): NIQE per set,
    PSNR/SSIM skipped, SR images of the photos' size x4 (weights: a random ELAN-light saved as params_ema)."""
    from basicsr.archs import build_network

    opt = yaml.safe_load((REPO / 'options' / 'realworld' / 'test_ELAN_light_realworld_x4.yml').read_text())
    torch.manual_seed(0)
    torch.save({'params_ema': build_network(dict(opt['network_g'])).state_dict()}, tmp_path / 'net.pth')
    write(tmp_path / 'photos' / 'a.jpg', photo_like(70, 90, 1))
    out = ok(run_python(['-m', 'elan_arch.cli.basicsr_cmd', 'test', '-opt', str(REPO / 'options' / 'realworld' /
                         'test_ELAN_light_realworld_x4.yml'), '--force_yml', 'datasets:test_1:dataroot_lq=photos',
                         'path:pretrain_network_g=net.pth'], tmp_path, TEST_ENV))
    assert 'real_photos has no ground truth (SingleImageDataset): psnr, ssim skipped there, niqe computed' in out
    assert re.search(r'Validation real_photos\n\s+# niqe: [\d.]+', out)
    sr = cv2.imread(str(tmp_path / 'results' / opt['name'] / 'visualization' / 'real_photos' /
                        f'a_{opt["name"]}.png'))
    assert sr.shape == (280, 360, 3)
