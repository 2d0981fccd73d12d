"""Bad inputs to `elan prepare` and to ELANPairedImageDataset: the message names the file and the fix,
and nothing that looks like an output is left behind."""
from __future__ import annotations

import importlib
import shutil
from pathlib import Path

import lmdb
import pytest

import elan_arch  # noqa: F401
from elan_arch.cli import main
from elan_arch.data import ELANPairedImageDataset, check_lmdb_pair
from elan_arch.prepare import prepare_benchmark, prepare_div2k
from elan_arch.utils.errors import ElanError
from helpers.data import leftovers, make_div2k, photo_like, write

prepare_div2k_module = importlib.import_module('elan_arch.prepare.div2k')

OUTPUTS = ('DIV2K_train_HR_sub.lmdb', 'DIV2K_train_LR_bicubic_X2_sub.lmdb', 'DIV2K_train_LR_bicubic_X4_sub.lmdb',
           'DIV2K_train_HR_sub', 'X2_sub', 'X4_sub', 'GTmod12', 'LRbicx2', 'LRbicx4')
SMALL = dict(scales=(2, 4), crop_size=24, step=24, progress=False)


def div2k_fails(root: Path, match: str, **kwargs) -> None:
    """prepare_div2k on ``root`` raises ElanError matching ``match`` and leaves no output behind."""
    with pytest.raises(ElanError, match=match):
        prepare_div2k(root, **{**SMALL, **kwargs})
    assert leftovers(root, OUTPUTS) == []


def test_corrupt_image_named_and_no_output(tmp_path):
    make_div2k(tmp_path, [(48, 48), (48, 48)])
    (tmp_path / 'DIV2K_train_HR' / '0003.png').write_bytes(b'\x89PNG\r\n\x1a\n' + b'\0' * 40)  # last, so after crops
    div2k_fails(tmp_path, r'0003\.png cannot be read as an image .*replace it', keep_subimages=True)


@pytest.mark.parametrize('workers', [1, 2])
def test_truncated_image_in_parallel_run(tmp_path, workers):
    make_div2k(tmp_path, [(48, 48), (48, 48)])
    good = (tmp_path / 'DIV2K_train_HR' / '0001.png').read_bytes()
    (tmp_path / 'DIV2K_train_HR' / '0002.png').write_bytes(good[:len(good) // 2])
    div2k_fails(tmp_path, r'0002\.png cannot be read', workers=workers)


@pytest.mark.parametrize('damage', ['cut JPEG', 'corrupt JPEG', 'cut PNG'])
def test_a_damaged_photo_does_not_become_training_data(tmp_path, capfd, damage):
    """OpenCV decodes a truncated or corrupt JPEG with grey where data is missing (libjpeg only warns on stderr):
    ``elan prepare`` stops naming the file, and writes nothing."""
    import cv2

    make_div2k(tmp_path, [(48, 48)])
    ext = '.png' if 'PNG' in damage else '.jpg'
    data = bytearray(cv2.imencode(ext, photo_like(48, 48, 5))[1].tobytes())
    if damage.startswith('cut'):
        data = data[:len(data) * 2 // 3]
    else:
        for k in range(5):
            data[len(data) * 7 // 10 + 17 * k] ^= 0x55
    (tmp_path / 'DIV2K_train_HR' / f'0002{ext}').write_bytes(bytes(data))
    assert main(['prepare', 'div2k', '--input', str(tmp_path), '--scales', '2', '--crop-size', '24', '--step', '24',
                 '--workers', '1', '--quiet']) == 2
    err = capfd.readouterr().err
    assert f'0002{ext}' in err and ('is damaged' in err or 'cannot be read as an image' in err), err
    assert damage != 'corrupt JPEG' or 'is damaged: its decoder reports "Corrupt JPEG data' in err
    assert 'Traceback' not in err and leftovers(tmp_path, OUTPUTS) == []
    set5 = tmp_path / 'Set5'
    set5.mkdir()
    (set5 / f'bad{ext}').write_bytes(bytes(data))
    with pytest.raises(ElanError, match=rf'bad\{ext} (is damaged|cannot be read as an image)'):
        prepare_benchmark(set5, scales=(2, ), progress=False)
    assert leftovers(set5, OUTPUTS) == []


def test_lr_of_wrong_size_named_with_expected_size(tmp_path):
    make_div2k(tmp_path, [(48, 48)], lr={2: [photo_like(23, 24, 0)]})
    div2k_fails(tmp_path, r'0001x2\.png is 23x24 .* at scale x2 needs an LR image of 24x24; replace the LR file')


def test_lr_folder_without_the_partner_of_an_hr_image(tmp_path):
    make_div2k(tmp_path, [(48, 48), (48, 48)], lr={4: [photo_like(12, 12, 0)]})
    div2k_fails(tmp_path, r'X4 has no LR image for .*0002\.png \(expected 0002x4\.png\)')


def test_non_image_file_named(tmp_path):
    make_div2k(tmp_path, [(48, 48)])
    (tmp_path / 'DIV2K_train_HR' / 'notes.txt').write_text('hello')
    (tmp_path / 'DIV2K_train_HR' / '.DS_Store').write_text('hidden files are ignored')
    div2k_fails(tmp_path, r'notes\.txt is not an image .*move it out of the folder')


def test_empty_and_missing_input_folders(tmp_path):
    (tmp_path / 'DIV2K_train_HR').mkdir()
    div2k_fails(tmp_path, r'DIV2K_train_HR holds no images')
    div2k_fails(tmp_path / 'nowhere', r'nowhere/DIV2K_train_HR does not exist')
    (tmp_path / 'Set5').mkdir()
    with pytest.raises(ElanError, match=r'Set5 holds no images'):
        prepare_benchmark(tmp_path / 'Set5', progress=False)


def test_images_smaller_than_the_crop_are_skipped_with_a_message(tmp_path):
    make_div2k(tmp_path, [(48, 48), (20, 100)])
    summary = prepare_div2k(tmp_path, **SMALL, force=True)
    assert summary.crops == 4 and len(summary.skipped) == 1
    assert '0002.png: 20x100 is smaller than the crop size 24' in summary.skipped[0]
    shutil.rmtree(tmp_path / 'DIV2K_train_HR')
    make_div2k(tmp_path, [(20, 20)])
    with pytest.raises(ElanError, match='no image .* is at least --crop-size 24'):
        prepare_div2k(tmp_path, **SMALL, force=True)


def test_existing_output_refused_then_replaced_with_force(tmp_path, capsys):
    make_div2k(tmp_path, [(48, 48)])
    existing = tmp_path / 'DIV2K_train_LR_bicubic_X4_sub.lmdb'
    existing.mkdir()
    (existing / 'mine.txt').write_text('keep me')
    assert main(['prepare', 'div2k', '--input', str(tmp_path), '--scales', '2', '4', '--crop-size', '24',
                 '--step', '24', '--quiet']) == 2
    assert 'X4_sub.lmdb already exists; pass --force to replace it' in capsys.readouterr().err
    assert (existing / 'mine.txt').read_text() == 'keep me' and not (tmp_path / 'DIV2K_train_HR_sub.lmdb').exists()
    prepare_div2k(tmp_path, **SMALL, force=True)
    assert sorted(p.name for p in existing.iterdir()) == ['data.mdb', 'lock.mdb', 'meta_info.txt']

    write(tmp_path / 'Set5' / 'a.png', photo_like(24, 24, 0))
    (tmp_path / 'Set5' / 'LRbicx2').mkdir()
    with pytest.raises(ElanError, match=r'Set5/LRbicx2 already exists; pass --force'):
        prepare_benchmark(tmp_path / 'Set5', scales=(2, 4), progress=False)
    assert not (tmp_path / 'Set5' / 'GTmod12').exists()


def test_interrupted_run_leaves_nothing(tmp_path, monkeypatch):
    make_div2k(tmp_path, [(48, 48)])

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare_div2k_module, 'check_lmdb_pair', interrupted)  # after every LMDB is written
    with pytest.raises(KeyboardInterrupt):
        prepare_div2k(tmp_path, **SMALL, keep_subimages=True)
    assert leftovers(tmp_path, OUTPUTS) == []


def test_bad_scale_crop_combination(tmp_path):
    make_div2k(tmp_path, [(48, 48)])
    div2k_fails(tmp_path, r'--crop-size 30 must be a positive multiple of 12', scales=(3, 4), crop_size=30)
    div2k_fails(tmp_path, r'--scales must list upscale factors of at least 2', scales=(1, ))


@pytest.fixture
def lmdb_pair(tmp_path):
    make_div2k(tmp_path, [(48, 72)])
    prepare_div2k(tmp_path, **SMALL)
    return tmp_path / 'DIV2K_train_HR_sub.lmdb', tmp_path / 'DIV2K_train_LR_bicubic_X2_sub.lmdb'


def test_check_accepts_a_good_pair_and_rejects_the_wrong_scale(lmdb_pair):
    gt, lq = lmdb_pair
    summary = check_lmdb_pair(gt, lq, 2)
    assert (summary.pairs, summary.gt_shape, summary.lq_shape) == (6, (24, 24, 3), (12, 12, 3))
    with pytest.raises(ElanError, match=r'0001_s001: GT 24x24x3 .* is not x4 of LQ 12x12x3'):
        check_lmdb_pair(gt, lq, 4)
    x4 = lq.parent / 'DIV2K_train_LR_bicubic_X4_sub.lmdb'
    lines = (x4 / 'meta_info.txt').read_text().splitlines(keepends=True)
    (x4 / 'meta_info.txt').write_text(''.join(lines[:-1]))
    env = lmdb.open(str(x4))
    with env.begin(write=True) as txn:
        txn.delete(b'0001_s006')
    env.close()
    with pytest.raises(ElanError, match=r'X4_sub.lmdb hold different keys \(only in GT: 0001_s006; only in LQ: none\)'):
        check_lmdb_pair(gt, x4, 4)


def test_check_reports_meta_info_out_of_step_and_refuses_what_basicsr_cannot_read(lmdb_pair):
    gt, lq = lmdb_pair
    metas = {d: (d / 'meta_info.txt').read_text().splitlines(keepends=True) for d in (gt, lq)}
    for folder, lines in metas.items():  # a stored key left out of both lists: BasicSR trains without it
        (folder / 'meta_info.txt').write_text(''.join(lines[:-1]))
    warnings = check_lmdb_pair(gt, lq, 2).warnings
    assert len(warnings) == 2 and all('stores keys meta_info.txt does not list (0001_s006)' in w for w in warnings)
    meta, lines = lq / 'meta_info.txt', metas[lq]
    meta.write_text(''.join(lines[:-1]))
    (gt / 'meta_info.txt').write_text(''.join(metas[gt]))
    with pytest.raises(ElanError, match=r'hold different keys \(only in GT: 0001_s006; only in LQ: none\)'):
        check_lmdb_pair(gt, lq, 2)
    meta.write_text(''.join(lines[:-1]) + 'garbage\n')
    with pytest.raises(ElanError, match=r"meta_info.txt line 6 'garbage' is not"):
        check_lmdb_pair(gt, lq, 2)
    meta.write_text(''.join(lines[:-1]) + lines[-1].replace('(12,12,3)', '(12,13,3)'))
    warnings = check_lmdb_pair(gt, lq, 2, samples=6).warnings
    assert len(warnings) == 1 and 'says (12, 13, 3) for 0001_s006, but the image is (12, 12, 3)' in warnings[0]
    meta.write_text(''.join(lines) + '0001_s099.png (12,12,3) 1\n')
    (gt / 'meta_info.txt').write_text(''.join(metas[gt]) + '0001_s099.png (24,24,3) 1\n')
    with pytest.raises(ElanError, match=r'lists keys the LMDB does not store \(0001_s099\)'):
        check_lmdb_pair(gt, lq, 2)


def test_elan_dataset_names_the_option_and_the_command(lmdb_pair, tmp_path):
    gt, lq = lmdb_pair
    opt = {'name': 'train', 'dataroot_gt': str(gt), 'dataroot_lq': str(tmp_path / 'missing.lmdb'),
           'io_backend': {'type': 'lmdb'}, 'scale': 2, 'phase': 'train'}
    with pytest.raises(ElanError, match=r'dataset train: dataroot_lq .*missing.lmdb does not exist; create it with '
                                        r'`elan prepare div2k'):
        ELANPairedImageDataset(opt)
    with pytest.raises(ElanError, match=r'dataset train: dataroot_gt .* must be a folder whose name ends with .lmdb'):
        ELANPairedImageDataset({**opt, 'dataroot_gt': str(tmp_path / 'DIV2K_train_HR')})
    with pytest.raises(ElanError, match=r'dataset val: dataroot_lq .*LRbicx4 is not a folder; fix the path, or this '
                                        r'package makes such folders with `elan prepare benchmark'):
        ELANPairedImageDataset({**opt, 'name': 'val', 'dataroot_gt': str(tmp_path / 'DIV2K_train_HR'),
                                'dataroot_lq': str(tmp_path / 'LRbicx4'), 'io_backend': {'type': 'disk'}})
    assert len(ELANPairedImageDataset({**opt, 'dataroot_lq': str(lq)})) == 6
