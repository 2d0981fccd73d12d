"""``python -m elan_arch.demo --realworld``: the degraded held-out photos (fixed seeds, BasicSR's degradation), the
bicubic-trained network it starts from, and a cheap end-to-end run whose table matches the images it wrote."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

import elan_arch  # noqa: F401  (before basicsr)
from elan_arch.demo import realworld
from elan_arch.demo import run as demo
from helpers.data import photo_like, reference_lr, write

REPO = Path(__file__).resolve().parents[2]


def train_opt() -> dict:
    return yaml.safe_load((REPO / realworld.TRAIN_OPT).read_text())


def test_centre_square_and_sources():
    img = np.arange(30 * 50).reshape(30, 50)
    square = realworld.centre_square(img)
    assert square.shape == (16, 16) and square[0, 0] == img[7, 17]
    assert realworld.centre_square(np.zeros((300, 451, 3))).shape == (288, 288, 3)
    text = realworld.sources_text()
    assert 'HR/astronaut.png  skimage/data/astronaut.png' in text
    assert 'val/GT/chelsea_2.png  skimage/data/chelsea.png, centre square; LQ seed 2' in text


def test_degradation_is_seeded_and_degrades(tmp_path):
    """Same seed, same degraded photo (bit for bit); another seed, another one; the result is 1/4 of the photo and
    far from its plain bicubic downscaling (blur, noise and JPEG were applied)."""
    gt = photo_like(96, 96, 3)
    path = write(tmp_path / 'photo.png', gt)
    first, again, other = realworld.degrade([path, path, path], [5, 5, 6], train_opt())
    assert first.shape == (24, 24, 3) and first.dtype == np.uint8
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    difference = np.abs(first.astype(float) - reference_lr(gt, 4)).mean()
    assert difference > 2, difference


def test_bicubic_weights_prefer_make_demos(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'options').symlink_to(REPO / 'options')
    calls = []
    run_logged = lambda argv, total_iters=None, env=None: calls.append(argv)  # noqa: E731
    main_demo = tmp_path / 'experiments' / 'ELAN_light_x4_demo' / 'models' / 'net_g_latest.pth'
    main_demo.parent.mkdir(parents=True)
    main_demo.write_bytes(b'weights')
    weights, origin = realworld.bicubic_weights(run_logged, 7, {})
    assert weights == Path('experiments/ELAN_light_x4_demo/models/net_g_latest.pth') and calls == []
    assert origin.startswith("make demo's weights")

    main_demo.unlink()
    monkeypatch.setattr(demo, 'ensure_demo_data', lambda root: None)
    own = tmp_path / 'experiments' / realworld.BICUBIC_NAME / 'models' / 'net_g_7.pth'
    run_logged = lambda argv, total_iters=None, env=None: calls.append(argv) or (  # noqa: E731
        own.parent.mkdir(parents=True) or own.write_bytes(b'w'))
    weights, origin = realworld.bicubic_weights(run_logged, 7, {})
    assert calls == [['train', '-opt', demo.TRAIN_OPT, '--force_yml', f'name={realworld.BICUBIC_NAME}',
                      'train:total_iter=7', 'train:scheduler:periods=[7]', 'val:val_freq=7']]
    assert weights == Path('experiments', realworld.BICUBIC_NAME, 'models', 'net_g_7.pth')
    assert origin.startswith('a 7-iteration bicubic run')


def test_table_lists_every_photo_and_the_average():
    results = {'a': {m: (20. + i, .5, 9. - i) for i, m in enumerate(realworld.METHODS)},
               'b': {m: (22. + i, .7, 7. - i) for i, m in enumerate(realworld.METHODS)}}
    for res in results.values():
        res['clean'] = (float('inf'), 1., 3.)
    lines = realworld.format_table(results).splitlines()
    assert lines[2] == '| a | 20.00 / 0.5000 / 9.00 | 21.00 / 0.5000 / 8.00 | 22.00 / 0.5000 / 7.00 | 3.00 |'
    assert lines[4] == '| average | 21.00 / 0.6000 / 8.00 | 22.00 / 0.6000 / 7.00 | 23.00 / 0.6000 / 6.00 | 3.00 |'


@pytest.mark.slow
def test_cheap_run_end_to_end(tmp_path):
    """Two iterations of each training (``--iters 2 --bicubic-iters 2``) through the real commands: the data, both
    test runs, the pictures, and a table whose PSNR and NIQE equal basicsr's metrics on the images written."""
    from basicsr.metrics import calculate_niqe, calculate_psnr

    (tmp_path / 'options').symlink_to(REPO / 'options')
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1', CUDA_VISIBLE_DEVICES='')
    result = subprocess.run([sys.executable, '-m', 'elan_arch.demo', '--realworld', '--iters', '2',
                             '--bicubic-iters', '2'], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=1500)
    out = result.stdout + result.stderr
    assert result.returncode in (0, 1), out[-4000:]
    assert ('ELAN real-world beats bicubic' in out) == (result.returncode == 0)
    root = tmp_path / 'datasets' / 'demo_realworld'
    assert (root / 'SOURCES.txt').read_text() == realworld.sources_text()
    assert len((root / 'meta_info' / 'meta_info_HR_sub.txt').read_text().splitlines()) == 40
    log = next((tmp_path / 'experiments' / 'ELAN_light_realesrnet_x4_demo').glob('train_*.log')).read_text()
    assert 'Validation set demo_realworld_lq has no ground truth (SingleImageDataset): psnr skipped there' in log
    row = re.search(r'\| motorcycle_left_2 \| (.*) \|', out).group(1).split(' | ')
    psnr, _, niqe = (float(v) for v in row[2].split(' / '))
    sr = cv2.imread(str(tmp_path / 'results' / 'test_ELAN_light_realesrnet_x4_demo' / 'visualization' /
                        'demo_realworld_pairs' / 'motorcycle_left_2_test_ELAN_light_realesrnet_x4_demo.png'))
    clean = cv2.imread(str(root / 'val' / 'GT' / 'motorcycle_left_2.png'))
    assert psnr == pytest.approx(calculate_psnr(sr, clean, 4, test_y_channel=True), abs=0.006)
    assert niqe == pytest.approx(calculate_niqe(sr, 4), abs=0.006)
    pictures = sorted((tmp_path / 'results' / 'test_ELAN_light_realesrnet_x4_demo_pictures').glob('*.png'))
    assert [p.name for p in pictures] == [f'realworld_{n}_{s}.png' for n in ('chelsea', 'motorcycle_left')
                                          for s in (1, 2)]
    assert cv2.imread(str(pictures[0])).shape == (2 * 144 + 34, 5 * 2 * 144 + 4 * 6, 3)  # 5 panels, zoom 2
