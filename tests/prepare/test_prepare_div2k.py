"""`elan prepare div2k / benchmark / demo`: outputs read back through BasicSR, against independent references."""
from __future__ import annotations

from pathlib import Path

import cv2
import lmdb
import numpy as np
import pytest
import skimage

import elan_arch  # noqa: F401
from basicsr.utils.registry import DATASET_REGISTRY
from elan_arch.cli import main
from elan_arch.data import check_lmdb_pair
from elan_arch.prepare import prepare_benchmark, prepare_demo, prepare_div2k
from elan_arch.prepare.subimages import crop_positions
from elan_arch.utils.errors import ElanError
from helpers.data import make_div2k, paired_lmdb_items, photo_like, reference_lr, write

SKIMAGE_DATA = Path(skimage.__file__).parent / 'data'


def test_crop_positions_follow_basicsr_extract_subimages():
    # DIV2K 0001 is 1404x2040: 480 crops every 240 plus one flush with the far edge
    assert crop_positions(2040, 480, 240) == [0, 240, 480, 720, 960, 1200, 1440, 1560]
    assert crop_positions(1404, 480, 240) == [0, 240, 480, 720, 924]
    assert crop_positions(960, 480, 240) == [0, 240, 480]
    assert crop_positions(479, 480, 240) == []


def test_div2k_from_hr_only_reads_back_through_basicsr_byte_equal(tmp_path):
    # 100x130 -> mod 12 -> 96x120: rows at 0, 24, 48 and columns at 0, 24, 48, 72 (48 crops, step 24);
    # 50x50 -> 48x48: one crop
    hrs = make_div2k(tmp_path, [(100, 130), (50, 50)])
    summary = prepare_div2k(tmp_path, scales=(2, 3, 4), crop_size=48, step=24, progress=False)
    assert (summary.images, summary.crops, summary.skipped) == (2, 12 + 1, [])
    assert summary.bytes > 0 and len(summary.outputs) == 4
    gt_lmdb = tmp_path / 'DIV2K_train_HR_sub.lmdb'
    expected_keys = [f'0001_s{i:03d}' for i in range(1, 13)] + ['0002_s001']
    assert (gt_lmdb / 'meta_info.txt').read_text().splitlines()[0] == '0001_s001.png (48,48,3) 1'
    positions = [(y, x) for y in (0, 24, 48) for x in (0, 24, 48, 72)] + [(0, 0)]
    for scale in (2, 3, 4):
        lq_lmdb = tmp_path / f'DIV2K_train_LR_bicubic_X{scale}_sub.lmdb'
        assert sorted(p.name for p in lq_lmdb.iterdir()) == ['data.mdb', 'lock.mdb', 'meta_info.txt']
        items = paired_lmdb_items(gt_lmdb, lq_lmdb, scale)
        assert sorted(items) == expected_keys
        lrs = [reference_lr(hr, scale) for hr in hrs]
        for key, (y, x) in zip(expected_keys, positions):
            image = int(key[:4]) - 1
            gt, lq = items[key]
            assert np.array_equal(gt, hrs[image][y:y + 48, x:x + 48]), key
            n, ly, lx = 48 // scale, y // scale, x // scale
            assert np.array_equal(lq, lrs[image][ly:ly + n, lx:lx + n]), (key, scale)


def test_div2k_given_lr_images_are_cropped_and_subimages_equal_lmdb_values(tmp_path):
    sizes = [(72, 96), (48, 60)]
    given = [photo_like(h // 2, w // 2, seed=10 + i) for i, (h, w) in enumerate(sizes)]  # not bicubic of HR
    hrs = make_div2k(tmp_path / 'in', sizes, lr={2: given})
    out = tmp_path / 'out'
    prepare_div2k(tmp_path / 'in', out, scales=(2, 4), crop_size=24, step=24, keep_subimages=True, progress=False)
    x2 = paired_lmdb_items(out / 'DIV2K_train_HR_sub.lmdb', out / 'DIV2K_train_LR_bicubic_X2_sub.lmdb', 2)
    x4 = paired_lmdb_items(out / 'DIV2K_train_HR_sub.lmdb', out / 'DIV2K_train_LR_bicubic_X4_sub.lmdb', 4)
    assert np.array_equal(x2['0001_s007'][1], given[0][12:24, 24:36])  # row 1, column 2 of 3x4 crops
    assert np.array_equal(x4['0001_s007'][1], reference_lr(hrs[0], 4)[6:12, 12:18])  # no X4 folder: made from HR
    assert np.array_equal(x4['0002_s005'][0], hrs[1][24:48, 24:48])
    # the kept PNG crops are BasicSR's *_sub folders, byte for byte the LMDB values
    env = lmdb.open(str(out / 'DIV2K_train_LR_bicubic_X2_sub.lmdb'), readonly=True, lock=False)
    with env.begin() as txn:
        for png in sorted((out / 'DIV2K_train_LR_bicubic' / 'X2_sub').iterdir()):
            assert txn.get(png.stem.encode()) == png.read_bytes()
    env.close()
    assert len(list((out / 'DIV2K_train_HR_sub').iterdir())) == 12 + 6


def test_benchmark_layout_matches_imresize_and_parallel_equals_serial(tmp_path):
    imgs = {'baby': photo_like(61, 50, 1), 'bird': photo_like(40, 37, 2), 'zebra': photo_like(30, 27, 3)}
    for name, img in imgs.items():
        write(tmp_path / 'Set5' / 'HR' / f'{name}.png', img)
        write(tmp_path / 'Set5' / 'LR_bicubic' / 'X2' / f'{name}x2.png', img[::2, ::2])  # ignored
    write(tmp_path / 'Set14' / 'comic.bmp', imgs['baby'])
    summary = prepare_benchmark([tmp_path / 'Set5', tmp_path / 'Set14'], scales=(2, 3, 4), progress=False)
    assert (summary.images, summary.crops) == (4, 4)
    for name, img in imgs.items():
        gt = cv2.imread(str(tmp_path / 'Set5' / 'GTmod12' / f'{name}.png'), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(gt, img[:img.shape[0] // 12 * 12, :img.shape[1] // 12 * 12])
        for scale in (2, 3, 4):
            lr = cv2.imread(str(tmp_path / 'Set5' / f'LRbicx{scale}' / f'{name}.png'), cv2.IMREAD_UNCHANGED)
            assert np.array_equal(lr, reference_lr(gt, scale)), (name, scale)
    serial = tmp_path / 'Set14' / 'LRbicx3' / 'comic.png'
    prepare_benchmark(tmp_path / 'Set5', tmp_path / 'parallel', scales=(3, ), workers=2, progress=False)
    assert (tmp_path / 'parallel' / 'LRbicx3' / 'baby.png').read_bytes() == serial.read_bytes()


@pytest.mark.slow
def test_demo_from_real_photos_through_elan_dataset(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(['prepare', 'demo', '--scales', '4', '--workers', '2', '--quiet']) == 0
    root = tmp_path / 'datasets' / 'demo'
    astronaut = cv2.imread(str(SKIMAGE_DATA / 'astronaut.png'), cv2.IMREAD_COLOR)
    assert np.array_equal(cv2.imread(str(root / 'DIV2K_train_HR' / '0001.png')), astronaut)
    gt, lq = root / 'DIV2K_train_HR_sub.lmdb', root / 'DIV2K_train_LR_bicubic_X4_sub.lmdb'
    assert check_lmdb_pair(gt, lq, 4).pairs > 100
    items = paired_lmdb_items(gt, lq, 4)
    # astronaut is 512x512 (a multiple of 4): crops at 0, 120, 240, 272; crop 6 is row 1, column 1
    assert np.array_equal(items['0001_s006'][0], astronaut[120:360, 120:360])
    assert np.array_equal(items['0001_s006'][1], reference_lr(astronaut, 4)[30:90, 30:90])
    chelsea = cv2.imread(str(SKIMAGE_DATA / 'chelsea.png'), cv2.IMREAD_COLOR)[:300, :444]
    assert np.array_equal(cv2.imread(str(root / 'val' / 'GTmod12' / 'chelsea.png')), chelsea)
    assert np.array_equal(cv2.imread(str(root / 'val' / 'LRbicx4' / 'chelsea.png')), reference_lr(chelsea, 4))

    dataset = DATASET_REGISTRY.get('ELANPairedImageDataset')(
        {'name': 'demo', 'dataroot_gt': str(gt), 'dataroot_lq': str(lq), 'io_backend': {'type': 'lmdb'}, 'scale': 4,
         'phase': 'train', 'gt_size': 96, 'use_hflip': True, 'use_rot': True})
    item = dataset[5]
    assert len(dataset) == len(items) and item['gt'].shape == (3, 96, 96) and item['lq'].shape == (3, 24, 24)

    with pytest.raises(ElanError, match='demo already exists; pass --force'):
        prepare_demo(root)
    prepare_demo(root, scales=(2, ), force=True, progress=False)
    assert sorted(p.name for p in root.glob('*.lmdb')) == ['DIV2K_train_HR_sub.lmdb',
                                                           'DIV2K_train_LR_bicubic_X2_sub.lmdb']


def test_worker_defaults_fit_the_input_size():
    """The demo's photos are small: one process unless asked (workers import torch first); DIV2K: the CPU cores."""
    import os

    from elan_arch.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(['prepare', 'demo']).workers == 1
    assert parser.parse_args(['prepare', 'demo', '--workers', '3']).workers == 3
    assert parser.parse_args(['prepare', 'div2k', '--input', 'x']).workers == min(8, os.cpu_count() or 1)


def test_the_demo_summary_counts_its_training_crop_pairs(tmp_path):
    """``elan prepare demo`` says what docs/data.md says: 9 training photos in 129 crop pairs, 2 held-out photos."""
    from elan_arch.prepare import prepare_demo

    summary = prepare_demo(tmp_path / 'demo', scales=(4, ), workers=1, progress=False)
    assert (summary.images, summary.crops) == (11, 129) and str(summary).startswith('11 images -> 129 crops')
