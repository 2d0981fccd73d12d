"""``elan prepare realworld`` / ``realworld-paired``: Real-ESRGAN's multiscale copies and sub-images, read back by
BasicSR's own RealESRGANDataset / RealESRGANPairedDataset on both back-ends; bad inputs named, nothing left over."""
from __future__ import annotations

import importlib
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

import elan_arch  # noqa: F401  (before basicsr)
from elan_arch.cli import main
from elan_arch.prepare.demo_data import skimage_photo
from elan_arch.prepare.realworld import (multiscale_sizes, prepare_realworld, prepare_realworld_pairs,
                                         realworld_outputs)
from elan_arch.utils.errors import ElanError
from helpers.data import leftovers, photo_like, reference_lr, write

realworld = importlib.import_module('elan_arch.prepare.realworld')

PHOTOS = ('astronaut.png', 'coffee.png', 'coins.png')  # 512x512, 400x600 and 303x384 photos
OUTPUT_NAMES = ('photos_sub', 'photos_sub.lmdb', 'meta_info_photos_sub.txt', 'gt_sub', 'lq_sub', 'gt_sub.lmdb',
                'lq_sub.lmdb', 'meta_info_gt_pair.txt')
#: The degradation settings of BasicSR's train_realesrnet_x4plus.yml: RealESRGANDataset needs them all.
KERNELS = dict(blur_kernel_size=21, kernel_list=['iso', 'aniso', 'generalized_iso', 'generalized_aniso', 'plateau_iso',
                                                 'plateau_aniso'],
               kernel_prob=[0.45, 0.25, 0.12, 0.03, 0.12, 0.03], sinc_prob=0.1, blur_sigma=[0.2, 3],
               betag_range=[0.5, 4], betap_range=[1, 2], final_sinc_prob=0.8)
KERNELS.update({f'{k}2': v for k, v in KERNELS.items() if k != 'final_sinc_prob'}, blur_sigma2=[0.2, 1.5])


@pytest.fixture
def photos(tmp_path) -> Path:
    folder = tmp_path / 'photos'
    folder.mkdir()
    for name in PHOTOS:
        shutil.copy(skimage_photo(name), folder / name)
    return folder


def upstream_copies(path: Path):
    """Real-ESRGAN's generate_multiscale_DF2K.py, written out again: Pillow opens the file and resizes it."""
    from PIL import Image

    img = Image.open(path).convert('RGB')
    width, height = img.size
    copies = {f'T{i}': img.resize((int(width * s), int(height * s)), resample=Image.LANCZOS)
              for i, s in enumerate([0.75, 0.5, 1 / 3])}
    if width < height:
        size = (400, int(400 * (height / width)))
    else:
        size = (int(400 * (width / height)), 400)
    copies['T3'] = img.resize(size, resample=Image.LANCZOS)
    return {k: np.asarray(v)[:, :, ::-1] for k, v in copies.items()}


def realesrgan_items(opt_root: dict):
    """Every item of BasicSR's RealESRGANDataset (no flips) as uint8 BGR, by the path or key it read."""
    from basicsr.data.realesrgan_dataset import RealESRGANDataset

    dataset = RealESRGANDataset({**KERNELS, **opt_root, 'use_hflip': False, 'use_rot': False})
    items = {}
    for item in dataset:
        assert item['kernel1'].shape == (21, 21) and item['sinc_kernel'].shape == (21, 21)
        img = np.round(item['gt'].numpy().transpose(1, 2, 0)[..., ::-1] * 255).astype(np.uint8)
        items[Path(item['gt_path']).stem] = img
    return items


def test_multiscale_copies_equal_the_upstream_script(tmp_path):
    """Crop size 0 keeps images and copies whole: each stored copy equals Pillow's resize of the file, by name."""
    folder = tmp_path / 'hr'
    write(folder / 'wide.png', photo_like(457, 913, 1))
    write(folder / 'tall.png', photo_like(901, 601, 2))
    prepare_realworld([folder], tmp_path / 'out', crop_size=0, progress=False)
    crops = tmp_path / 'out' / 'hr_sub'
    for stem in ('wide', 'tall'):
        for suffix, expected in upstream_copies(folder / f'{stem}.png').items():
            stored = cv2.imread(str(crops / f'{stem}{suffix}_s001.png'))
            assert stored.shape == expected.shape and np.array_equal(stored, expected), (stem, suffix)
        assert np.array_equal(cv2.imread(str(crops / f'{stem}_s001.png')), cv2.imread(str(folder / f'{stem}.png')))
    assert multiscale_sizes(913, 457) == [('T0', (684, 342)), ('T1', (456, 228)), ('T2', (304, 152)),
                                          ('T3', (799, 400))]
    assert multiscale_sizes(500, 500)[-1] == ('T3', (400, 400))


@pytest.mark.parametrize('backend', ['folder', 'lmdb'])
def test_bundled_photos_read_by_basicsr_realesrgan_dataset(photos, tmp_path, backend):
    out = tmp_path / 'DF2K'
    summary = prepare_realworld([photos], out, backends=[backend], progress=False)
    paths = realworld_outputs(out, 'photos', [backend])
    # astronaut 512x512: 4 crops + T3 (400x400): 1; coffee 600x400: 2 (T3 would not shrink it); coins 384x303: none
    expected = ['astronautT3_s001', 'astronaut_s001', 'astronaut_s002', 'astronaut_s003', 'astronaut_s004',
                'coffee_s001', 'coffee_s002']
    assert summary.crops == len(expected)
    # too small for a 400 crop: T0-T2 of astronaut and coffee, coins and its T0-T2; T3 not smaller: coffee, coins
    assert [line.split(' (e.g.')[0] for line in summary.skipped] == [
        '10 images or copies left out because they are smaller than the crop on a side',
        '2 multiscale copies left out because they would not be smaller than their image']
    if backend == 'folder':
        lines = paths['meta_info'].read_text().splitlines()
        assert lines == [f'photos_sub/{stem}.png (400,400,3)' for stem in sorted(expected)]
        items = realesrgan_items({'dataroot_gt': str(out), 'meta_info': str(paths['meta_info']),
                                  'io_backend': {'type': 'disk'}})
    else:
        assert sorted(p.name for p in paths['lmdb'].iterdir()) == ['data.mdb', 'lock.mdb', 'meta_info.txt']
        items = realesrgan_items({'dataroot_gt': str(paths['lmdb']), 'io_backend': {'type': 'lmdb'}})
    assert sorted(items) == sorted(expected)
    astronaut = cv2.imread(str(photos / 'astronaut.png'))
    assert np.array_equal(items['astronaut_s001'], astronaut[:400, :400])
    assert np.array_equal(items['astronaut_s004'], astronaut[112:, 112:])  # the crop flush with the corner
    coffee = cv2.imread(str(photos / 'coffee.png'))
    assert np.array_equal(items['coffee_s002'], coffee[:, 200:600])
    assert leftovers(out, ()) == []


def test_damaged_and_foreign_files_named_and_nothing_left(photos, tmp_path):
    out = tmp_path / 'out'
    good = (photos / 'coffee.png').read_bytes()
    (photos / 'zz_cut.png').write_bytes(good[:len(good) // 2])  # sorted by size: cut last, after the others
    with pytest.raises(ElanError, match=r'zz_cut\.png cannot be read as an image .*replace it'):
        prepare_realworld([photos], out, backends=['folder', 'lmdb'], progress=False)
    assert not out.exists() or leftovers(out, OUTPUT_NAMES) == []
    (photos / 'zz_cut.png').unlink()

    (photos / 'notes.txt').write_text('hello')
    with pytest.raises(ElanError, match=r'notes\.txt is not an image'):
        prepare_realworld([photos], out, progress=False)
    (photos / 'notes.txt').unlink()

    other = tmp_path / 'other'
    write(other / 'coffee.jpg', photo_like(500, 500, 3))
    with pytest.raises(ElanError, match=r'coffee\.png and .*other/coffee\.jpg have the same name stem'):
        prepare_realworld([photos, other], out, progress=False)
    write(other / 'a.b.png', photo_like(500, 500, 3))
    (other / 'coffee.jpg').unlink()
    with pytest.raises(ElanError, match=r'a\.b\.png: BasicSR LMDB keys must be ASCII without dots'):
        prepare_realworld([photos, other], out, progress=False)
    assert not out.exists() or leftovers(out, OUTPUT_NAMES) == []


@pytest.mark.parametrize('where', ['cutting', 'lmdb'])
def test_interrupted_run_leaves_nothing(photos, tmp_path, monkeypatch, where):
    out = tmp_path / 'out'
    calls = []
    cut = realworld.cut_image

    def interrupted(*args, **kwargs):
        calls.append(1)
        if where == 'lmdb' or len(calls) == 2:
            raise KeyboardInterrupt
        return cut(*args, **kwargs)

    monkeypatch.setattr(realworld, 'write_lmdb' if where == 'lmdb' else 'cut_image', interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare_realworld([photos], out, backends=['folder', 'lmdb'], progress=False)
    assert calls and leftovers(out, OUTPUT_NAMES) == []
    assert [p.name for p in out.rglob('*') if p.is_file()] == []


def test_existing_output_refused_then_replaced_with_force(photos, tmp_path, capsys):
    out = tmp_path / 'out'
    (out / 'photos_sub').mkdir(parents=True)
    (out / 'photos_sub' / 'mine.txt').write_text('keep me')
    argv = ['prepare', 'realworld', '--input', str(photos), '--output', str(out), '--no-multiscale', '--quiet',
            '--workers', '1']
    assert main(argv) == 2
    assert 'photos_sub already exists; pass --force to replace it' in capsys.readouterr().err
    assert (out / 'photos_sub' / 'mine.txt').read_text() == 'keep me' and not (out / 'meta_info').exists()
    assert main(argv + ['--force', '--backend', 'folder', 'lmdb']) == 0
    printed = capsys.readouterr().out
    assert f'dataroot_gt: {out}, meta_info: {out}/meta_info/meta_info_photos_sub.txt' in printed
    assert f'dataroot_gt: {out}/photos_sub.lmdb, io_backend: {{type: lmdb}}' in printed
    assert sorted(p.name for p in (out / 'photos_sub').iterdir())[:2] == ['astronaut_s001.png', 'astronaut_s002.png']
    assert not any('T' in p.stem.split('_')[0][-2:] for p in (out / 'photos_sub').iterdir())  # no copies


@pytest.mark.parametrize('backend', ['folder', 'lmdb'])
def test_paired_layout_read_by_basicsr_realesrgan_paired_dataset(tmp_path, backend):
    from basicsr.data.realesrgan_paired_dataset import RealESRGANPairedDataset

    gts = {'p1': photo_like(96, 128, 1), 'p2': photo_like(80, 80, 2)}
    for stem, gt in gts.items():
        write(tmp_path / 'gt' / f'{stem}.png', gt)
        write(tmp_path / 'lq' / f'{stem}x4.png', reference_lr(gt, 4))
    out = tmp_path / 'pairs'
    summary = prepare_realworld_pairs(tmp_path / 'gt', tmp_path / 'lq', out, 4, backends=[backend], crop_size=64,
                                      step=32, progress=False)
    assert summary.crops == 6 + 4  # 96x128: rows at 0, 32 x columns at 0, 32, 64; 80x80: 0, 16 (flush) each way
    opt = {'scale': 4, 'phase': 'val'}
    if backend == 'folder':
        meta = out / 'meta_info' / 'meta_info_gt_pair.txt'
        assert meta.read_text().splitlines()[0] == 'gt_sub/p1_s001.png, lq_sub/p1_s001.png'
        opt.update(dataroot_gt=str(out), dataroot_lq=str(out), meta_info=str(meta), io_backend={'type': 'disk'})
    else:
        opt.update(dataroot_gt=str(out / 'gt_sub.lmdb'), dataroot_lq=str(out / 'lq_sub.lmdb'),
                   io_backend={'type': 'lmdb'})
    items = {Path(item['gt_path']).stem: item for item in RealESRGANPairedDataset(opt)}
    assert sorted(items) == [f'p1_s00{i}' for i in range(1, 7)] + [f'p2_s00{i}' for i in range(1, 5)]
    lq = np.round(items['p1_s006']['lq'].numpy().transpose(1, 2, 0)[..., ::-1] * 255).astype(np.uint8)
    gt = np.round(items['p1_s006']['gt'].numpy().transpose(1, 2, 0)[..., ::-1] * 255).astype(np.uint8)
    assert np.array_equal(gt, gts['p1'][32:96, 64:128]) and np.array_equal(lq, reference_lr(gts['p1'], 4)[8:24, 16:32])


def test_paired_inputs_that_do_not_pair_are_named(tmp_path):
    write(tmp_path / 'gt' / 'p1.png', photo_like(96, 96, 1))
    write(tmp_path / 'lq' / 'p1.png', photo_like(20, 24, 1))
    args = (tmp_path / 'gt', tmp_path / 'lq', tmp_path / 'out', 4)
    with pytest.raises(ElanError, match=r'lq/p1\.png is 20x24 but its HR image .*gt/p1\.png is 96x96, which at scale '
                                        r'x4 needs an LR image of 24x24'):
        prepare_realworld_pairs(*args, crop_size=64, step=32, progress=False)
    write(tmp_path / 'gt' / 'p2.png', photo_like(96, 96, 2))
    with pytest.raises(ElanError, match=r'lq has no LQ image for .*gt/p2\.png \(expected p2\.png or p2x4\.png'):
        prepare_realworld_pairs(*args, crop_size=64, step=32, progress=False)
    with pytest.raises(ElanError, match=r'--crop-size 66 must be a positive multiple of 4'):
        prepare_realworld_pairs(*args, crop_size=66, step=32, progress=False)
    assert leftovers(tmp_path, OUTPUT_NAMES) == []
