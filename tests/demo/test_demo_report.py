"""The demo's pictures: crops side by side, the validation PSNR curve, and what main() writes from them."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data

import elan_arch  # noqa: F401  (before basicsr)
from elan_arch.demo.run import write_pictures
from elan_arch.demo.report import comparison_image, detailed_crop, validation_curve, validation_psnrs
from elan_arch.utils.errors import ElanError


def test_detailed_crop_finds_the_textured_region():
    img = np.zeros((100, 120), np.uint8)
    img[60:90, 20:50] = np.random.default_rng(0).integers(0, 255, (30, 30))
    top, left = detailed_crop(img, 30)
    assert abs(top - 60) <= 1 and abs(left - 20) <= 1
    assert detailed_crop(img, 200) == (0, 0)  # larger than the image


def test_comparison_image_layout(tmp_path):
    photo = cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR)
    blurred = cv2.GaussianBlur(photo, (9, 9), 3)
    out = comparison_image([('bicubic 25.00 dB', blurred), ('ELAN 26.00 dB', photo), ('original', photo)],
                           tmp_path / 'compare.png', crop=100, zoom=2)
    img = cv2.imread(str(out))
    assert img.shape == (200 + 34, 3 * 200 + 2 * 6, 3)
    left, middle = img[:200, :200].astype(int), img[:200, 206:406].astype(int)
    assert np.abs(left - middle).mean() > 2  # the blurred crop differs from the sharp one
    assert np.array_equal(middle, img[:200, 412:612])  # same crop of identical images
    assert img[200:, :200].min() < 100  # a dark label on the white caption
    with pytest.raises(ElanError, match='differ in size'):
        comparison_image([('a', photo), ('b', photo[:10])], tmp_path / 'bad.png')
    assert not (tmp_path / 'bad.png').exists()


def test_validation_curve_from_a_basicsr_log(tmp_path):
    log = tmp_path / 'train.log'
    log.write_text('INFO: Validation demo_val\n\t # psnr: 27.1000\tBest: 27.1000 @ 100 iter\n'
                   '\t # ssim: 0.7000\tBest: 0.7000 @ 100 iter\nINFO: Validation demo_val\n'
                   '\t # psnr: 28.2500\tBest: 28.2500 @ 200 iter\n')
    assert validation_psnrs(log) == [27.1, 28.25]
    out = validation_curve([100, 200], [27.1, 28.25], 28.0, tmp_path / 'curve.png', 'test')
    img = cv2.imread(str(out))
    assert img is not None and img.shape[1] > 400 and img.std() > 5
    with pytest.raises(ElanError, match='2 validation results for 3 validations'):
        validation_curve([1, 2, 3], [27.1, 28.25], 28.0, tmp_path / 'bad.png', 'test')
    with pytest.raises(ElanError, match='no such training log'):
        validation_psnrs(tmp_path / 'missing.log')


def test_write_pictures_names_and_curve(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    photo = cv2.cvtColor(skimage.data.chelsea(), cv2.COLOR_RGB2BGR)
    images = {'chelsea': {'bicubic': cv2.GaussianBlur(photo, (5, 5), 2), 'ELAN': photo, 'original': photo}}
    results = {'chelsea': {'bicubic': (25.0, 0.7), 'ELAN': (26.5, 0.8)}}
    opt = {'name': 'demo_exp', 'val': {'val_freq': 100}}
    (tmp_path / 'experiments' / 'demo_exp').mkdir(parents=True)
    log = tmp_path / 'experiments' / 'demo_exp' / 'train_demo_exp_20261127.log'
    log.write_text(''.join(f'# psnr: {p}\tBest\n' for p in (26.0, 26.3, 26.4)))  # 100, 200 and the end (250)
    written = write_pictures(images, results, opt, 250, tmp_path / 'out')
    assert [p.name for p in written] == ['compare_chelsea.png', 'validation_psnr.png']
    assert all(cv2.imread(str(p)) is not None for p in written)
    log.write_text('# psnr: 26.0\tBest\n')  # an interrupted run: no curve, a note instead
    written = write_pictures(images, results, opt, 250, tmp_path / 'out2')
    assert [p.name for p in written] == ['compare_chelsea.png'] and 'no PSNR curve' in capsys.readouterr().out


def test_the_paths_the_demo_prints_exist(tmp_path, monkeypatch):
    """The trained weights (net_g_latest.pth, else the last net_g_<iter>.pth) and the pictures, each printed only
    if it exists; the pictures live where a later `basicsr test` of the demo does not move them."""
    from elan_arch.demo.run import TEST_OPT, _load_yaml, pictures_folder, report_paths

    experiment = tmp_path / 'experiments' / 'ELAN_light_x4_demo'
    (experiment / 'models').mkdir(parents=True)
    for name in ('net_g_100.pth', 'net_g_500.pth', 'net_g_latest_backup.pth'):
        (experiment / 'models' / name).write_bytes(b'x')
    picture = tmp_path / 'compare_chelsea.png'
    picture.write_bytes(b'png')
    lines = report_paths(experiment, [picture, tmp_path / 'validation_psnr.png'])  # the curve was not written
    assert lines == [f'Trained weights: {experiment}/models/net_g_500.pth',
                     f'Upscale a photo with them: elan upscale -i photo.jpg -o photo_x4.png --weights '
                     f'{experiment}/models/net_g_500.pth',
                     f'Pictures: {picture}']
    (experiment / 'models' / 'net_g_latest.pth').write_bytes(b'x')  # what a finished run leaves
    assert report_paths(experiment, [])[0] == f'Trained weights: {experiment}/models/net_g_latest.pth'
    assert report_paths(tmp_path / 'nothing', []) == []
    test_name = _load_yaml(str(Path(__file__).resolve().parents[2] / TEST_OPT))['name']
    assert pictures_folder(test_name) == Path('results', f'{test_name}_pictures')  # not results/<test name>/


@pytest.mark.parametrize('busy', [True, False])
def test_demo_commands_wait_passively_only_on_a_busy_cpu(monkeypatch, busy):
    from elan_arch.demo import run as demo

    seen = {}

    class FakeProcess:
        def __init__(self, command, env, **kwargs):
            seen.update(command=command, env=env)
            self.stdout, self.returncode = iter(['done\n']), 0

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    from elan_arch.utils import cpu_tuning

    for var in ('OMP_WAIT_POLICY', 'OMP_NUM_THREADS', cpu_tuning.CHECKED):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(cpu_tuning, 'cpu_busy', lambda: busy)
    monkeypatch.setattr(demo.subprocess, 'Popen', FakeProcess)
    demo.run_logged(['test', '-opt', 'x.yml'])
    assert seen['command'][-3:] == ['test', '-opt', 'x.yml']
    assert seen['env'].get('OMP_WAIT_POLICY') == ('PASSIVE' if busy else None)
    assert seen['env'][cpu_tuning.CHECKED] == '1'  # its basicsr commands do not look again
    monkeypatch.setenv('OMP_WAIT_POLICY', 'ACTIVE')  # the user's choice wins
    demo.run_logged(['test', '-opt', 'x.yml'])
    assert seen['env']['OMP_WAIT_POLICY'] == 'ACTIVE'


def test_demo_data_is_built_when_missing_and_rebuilt_when_made_from_another_photo_list(tmp_path, monkeypatch):
    import elan_arch.prepare
    from elan_arch.prepare.demo_data import TRAIN_PHOTOS, demo_sources
    from elan_arch.demo.run import ensure_demo_data

    calls = []

    def fake_prepare(root, force=False):
        calls.append((root, force))
        root.mkdir(exist_ok=True)
        (root / 'SOURCES.txt').write_text(demo_sources())
        return 'prepared'

    monkeypatch.setattr(elan_arch.prepare, 'prepare_demo', fake_prepare)
    root = tmp_path / 'demo'
    ensure_demo_data(root)  # missing: built
    assert calls == [(root, False)]
    ensure_demo_data(root)  # today's list: used as it is
    assert len(calls) == 1
    assert f'skimage/data/{TRAIN_PHOTOS[-1]}' in (root / 'SOURCES.txt').read_text()
    (root / 'SOURCES.txt').write_text('DIV2K_train_HR/0006.png  skimage/data/retina.jpg\n')
    ensure_demo_data(root)  # made by prepare_demo from an older list: rebuilt in place
    assert calls[1:] == [(root, True)] and (root / 'SOURCES.txt').read_text() == demo_sources()
    own = tmp_path / 'own'
    own.mkdir()
    ensure_demo_data(own)  # someone's own data (no SOURCES.txt): never touched
    assert len(calls) == 2 and list(own.iterdir()) == []


@pytest.mark.parametrize('cuda', [False, True])
def test_demo_budget_is_the_option_files_on_the_cpu_and_larger_with_a_gpu(monkeypatch, cuda):
    import torch

    from elan_arch.demo.run import GPU_ITERS, default_iters

    monkeypatch.setattr(torch.cuda, 'is_available', lambda: cuda)
    assert default_iters({'train': {'total_iter': 500}}) == (GPU_ITERS if cuda else 500)
    assert default_iters({'train': {'total_iter': GPU_ITERS * 2}}) == GPU_ITERS * 2  # never less than the file's
