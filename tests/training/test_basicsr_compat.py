"""BasicSR's own files where BasicSR takes them: LMDBs written by basicsr's ``make_lmdb_from_imgs`` (with a
stale size in ``meta_info.txt``), folder datasets with ``filename_tmpl`` and ``meta_info_file``, upstream
option files (``num_gpu: 1``, SRGAN/ESRGAN models with ELAN as generator, wandb sections), and what the
data check refuses against what it only reports."""
from __future__ import annotations

import os
import urllib.error
from pathlib import Path
from typing import Any, Dict, List, Tuple

import cv2
import lmdb
import pytest
import torch
import yaml

import elan_arch  # noqa: F401  (before basicsr)
from basicsr.utils.lmdb_util import make_lmdb_from_imgs
from elan_arch.cli import main
from elan_arch.data import check_lmdb_pair
from elan_arch.data.paired_image_dataset import check_dataset_options
from elan_arch.deploy.checkpoint import complete
from elan_arch.training import basicsr_fixes, startup
from elan_arch.utils.errors import ElanError
from helpers.data import photo_like, reference_lr, write
from helpers.train import demo_root, ok, run_python

ENV = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1', CUDA_VISIBLE_DEVICES='')  # "no CUDA" anywhere
TINY_ELAN = {'type': 'ELAN', 'upscale': 4, 'c_elan': 15, 'm_elan': 2, 'n_share': 1, 'r_expand': 2,
             'window_sizes': [4, 8, 16]}


def basicsr_lmdb(root: Path, pairs: int = 6, gt_size: int = 96) -> Tuple[Path, Path]:
    """A GT/LQ (x4) LMDB pair written by basicsr's own ``make_lmdb_from_imgs``, as its
    ``scripts/data_preparation/create_lmdb.py`` does, from PNG crops."""
    keys = [f'img{i:03d}' for i in range(pairs)]
    for i, key in enumerate(keys):
        gt = photo_like(gt_size, gt_size, seed=i)
        write(root / 'gt' / f'{key}.png', gt)
        write(root / 'lq' / f'{key}.png', reference_lr(gt, 4))
    out = []
    for folder in ('gt', 'lq'):
        lmdb_path = root / f'{folder}.lmdb'
        make_lmdb_from_imgs(str(root / folder), str(lmdb_path), [f'{k}.png' for k in keys], keys, n_thread=1)
        out.append(lmdb_path)
    return out[0], out[1]


def edit_meta(lmdb_dir: Path, line: int, old: str, new: str) -> None:
    meta = lmdb_dir / 'meta_info.txt'
    lines = meta.read_text().splitlines()
    assert old in lines[line]
    lines[line] = lines[line].replace(old, new)
    meta.write_text('\n'.join(lines) + '\n')


def test_stale_meta_info_size_is_reported_not_refused(tmp_path, capsys):
    gt, lq = basicsr_lmdb(tmp_path)
    assert (gt / 'meta_info.txt').read_text().splitlines()[0] == 'img000.png (96,96,3) 1'  # basicsr's format
    edit_meta(gt, 0, '(96,96,3)', '(80,96,3)')  # stale: the stored image is 96x96
    summary = check_lmdb_pair(gt, lq, 4)
    assert summary.pairs == 6 and summary.gt_shape == (96, 96, 3) and summary.lq_shape == (24, 24, 3)
    assert len(summary.warnings) == 1
    assert 'meta_info.txt says (80, 96, 3) for img000, but the image is (96, 96, 3)' in summary.warnings[0]
    assert main(['prepare', 'check', '--gt', str(gt), '--lq', str(lq), '--scale', '4']) == 0
    out = capsys.readouterr()
    assert 'ok: 6 pairs' in out.out and f'elan prepare check: warning: GT LMDB {gt}: meta_info.txt says' in out.err
    with pytest.raises(ElanError, match='meta_info.txt says'):  # what elan prepare asks of its own output
        check_lmdb_pair(gt, lq, 4, strict=True)


def test_what_basicsr_ignores_is_reported(tmp_path):
    gt, lq = basicsr_lmdb(tmp_path)
    for folder in (gt, lq):  # stored but not listed, and a line without a size
        meta = folder / 'meta_info.txt'
        lines = meta.read_text().splitlines()
        meta.write_text('\n'.join(lines[:-2] + ['img004.png']) + '\n')
    warnings = check_lmdb_pair(gt, lq, 4).warnings
    assert len(warnings) == 2 and all('stores keys meta_info.txt does not list (img005)' in w for w in warnings)
    meta = gt / 'meta_info.txt'
    meta.write_text(meta.read_text() + 'img004.png (96,96,3) 1\n')
    (lq / 'meta_info.txt').write_text((lq / 'meta_info.txt').read_text() + 'img004.png (24,24,3) 1\n')
    assert any('lists img004 more than once' in w for w in check_lmdb_pair(gt, lq, 4).warnings)


def test_stale_size_that_breaks_the_scale_is_decoded_before_refusing(tmp_path):
    gt, lq = basicsr_lmdb(tmp_path)
    edit_meta(lq, 2, '(24,24,3)', '(30,24,3)')  # a key samples=1 does not decode: the images are fine
    warnings = check_lmdb_pair(gt, lq, 4, samples=1).warnings
    assert len(warnings) == 1 and 'says (30, 24, 3) for img002, but the image is (24, 24, 3)' in warnings[0]


def put(lmdb_dir: Path, key: str, data: bytes) -> None:
    env = lmdb.open(str(lmdb_dir), map_size=1 << 26)
    with env.begin(write=True) as txn:
        txn.put(key.encode(), data)
    env.close()


def test_what_would_break_training_is_refused(tmp_path):
    gt, lq = basicsr_lmdb(tmp_path)
    # a real scale mismatch on one pair only (its meta_info line is honest), away from the samples
    wrong = cv2.imencode('.png', photo_like(20, 24, seed=9))[1].tobytes()
    put(lq, 'img002', wrong)
    edit_meta(lq, 2, '(24,24,3)', '(20,24,3)')
    with pytest.raises(ElanError, match=r'img002: GT 96x96x3 .* is not x4 of LQ 20x24x3'):
        check_lmdb_pair(gt, lq, 4, samples=1)
    gt, lq = basicsr_lmdb(tmp_path / 'b')
    put(lq, 'img000', b'not an image')
    with pytest.raises(ElanError, match=r'image img000 does not decode .*if `elan prepare` made it, rebuild it with '
                                        r'--force; if another tool did'):
        check_lmdb_pair(gt, lq, 4)
    gt, lq = basicsr_lmdb(tmp_path / 'c')
    for folder in (gt, lq):
        (folder / 'meta_info.txt').write_text((folder / 'meta_info.txt').read_text() + 'img999.png (96,96,3) 1\n')
    with pytest.raises(ElanError, match=r'lists keys the LMDB does not store \(img999\), which BasicSR would fail'):
        check_lmdb_pair(gt, lq, 4)
    (gt / 'meta_info.txt').write_text('img000\n')
    with pytest.raises(ElanError, match=r"line 1 'img000' is not"):
        check_lmdb_pair(gt, lq, 4)


def folder_dataset(root: Path, tmpl: str, meta: bool) -> Dict[str, Any]:
    """GT crops and LQ crops named ``<name>x4.png``, as BasicSR's DIV2K folders are, as dataset options."""
    lines = []
    for i in range(3):
        gt = photo_like(64, 64, seed=i)
        write(root / 'GT' / f'{i:04d}.png', gt)
        write(root / 'LQ' / f'{i:04d}x4.png', reference_lr(gt, 4))
        lines.append(f'{i:04d}.png (64,64,3)')
    (root / 'meta_info.txt').write_text('\n'.join(lines) + '\n')
    opt = {'name': 'own', 'type': 'PairedImageDataset', 'dataroot_gt': str(root / 'GT'),
           'dataroot_lq': str(root / 'LQ'), 'io_backend': {'type': 'disk'}, 'filename_tmpl': tmpl, 'scale': 4}
    if meta:
        opt['meta_info_file'] = str(root / 'meta_info.txt')
    return opt


@pytest.mark.parametrize('meta', [True, False])
def test_folder_datasets_pair_as_basicsr_does(tmp_path, meta):
    assert check_dataset_options(folder_dataset(tmp_path, '{}x4', meta)) == []
    opt = folder_dataset(tmp_path, '{}', meta)
    expected = r'do not exist, e\.g\. .*LQ/000\d\.png' if meta else r'000\d\.png is not in lq_paths'
    with pytest.raises(ElanError, match=expected + r".*with filename_tmpl '\{\}' the LQ image of GT <name>\.<ext> "
                                                   r'is <name>\.<ext> in dataroot_lq'):
        check_dataset_options(opt)


def test_relative_dataroot_errors_say_relative_to_what(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    opt = {'name': 'own', 'dataroot_gt': 'data/GT', 'dataroot_lq': 'data/LQ', 'io_backend': {'type': 'disk'}}
    with pytest.raises(ElanError, match=rf'data/GT \(relative to the current directory: {tmp_path}/data/GT\)'):
        check_dataset_options(opt)


@pytest.mark.parametrize('num_gpu,dist,seen,problem', [
    (0, False, 0, None), (1, False, 1, None), (2, False, 4, None), (4, True, 8, None), (8, True, 8, None),
    (1, False, 0, 'PyTorch sees no CUDA GPU on this machine; set num_gpu: 0 to run on the CPU'),
    (1, True, 0, 'PyTorch sees no CUDA GPU'),
    (2, False, 1, 'PyTorch sees 1 CUDA GPU on this machine; set num_gpu: 1 or auto'),
    ('two', False, 1, "num_gpu: 'two' must be auto or an integer >= 0"),
    (-1, False, 1, 'must be auto or an integer >= 0'),
])
def test_num_gpu_must_fit_the_machine(num_gpu, dist, seen, problem):
    opt = {'num_gpu': num_gpu, 'dist': dist}
    if problem is None:
        startup.check_devices(opt, visible_gpus=seen)
    else:
        with pytest.raises(ElanError, match=problem):
            startup.check_devices(opt, visible_gpus=seen)


def test_a_failed_vgg_download_names_the_file_and_folder():
    def build_model(opt):
        raise urllib.error.URLError('Name or service not known')

    build = basicsr_fixes.explained_downloads(build_model)
    with pytest.raises(ElanError, match=r"download that failed: Name or service not known \(train:perceptual_opt "
                                        r"needs torchvision's pretrained vgg19 weights: put the file .* into "
                                        rf'{torch.hub.get_dir()}/checkpoints'):
        build({'train': {'perceptual_opt': {'type': 'PerceptualLoss'}}})


def test_apply_installs_the_download_message_on_basicsr_train(monkeypatch):
    """The ``basicsr`` command's ``basicsr.train.build_model`` (after :func:`basicsr_fixes.apply`) turns a failed
    download inside basicsr's real model building (here BasicSR's own ``PerceptualLoss`` fetching torchvision's
    VGG, offline) into the message, not urllib's traceback."""
    import basicsr.train as train
    import torchvision.models._api as weights_api
    from basicsr.losses import build_loss
    from basicsr.utils.registry import MODEL_REGISTRY

    basicsr_fixes.apply()

    def offline(*args, **kwargs):
        raise urllib.error.URLError('Name or service not known')
    monkeypatch.setattr(weights_api, 'load_state_dict_from_url', offline)
    monkeypatch.setattr(torch.hub, 'load_state_dict_from_url', offline)
    monkeypatch.setattr('basicsr.archs.vgg_arch.VGG_PRETRAIN_PATH', '/nonexistent/vgg19.pth')
    monkeypatch.setitem(MODEL_REGISTRY._obj_map, 'PerceptualOnlyModel', lambda opt: build_loss(
        dict(opt['train']['perceptual_opt'])))
    perceptual = {'type': 'PerceptualLoss', 'layer_weights': {'conv5_4': 1}, 'vgg_type': 'vgg19'}
    with pytest.raises(ElanError, match=r"download that failed: Name or service not known \(train:perceptual_opt "
                                        r"needs torchvision's pretrained vgg19 weights"):
        train.build_model({'model_type': 'PerceptualOnlyModel', 'train': {'perceptual_opt': perceptual}})


def test_apply_makes_basicsr_saves_atomic(tmp_path, monkeypatch):
    """After :func:`basicsr_fixes.apply`, basicsr's ``BaseModel.save_network`` and ``save_training_state``
    write into a hidden temporary folder and rename the checked file into place."""
    from basicsr.models.base_model import BaseModel

    basicsr_fixes.apply()
    model = BaseModel.__new__(BaseModel)
    model.opt = {'rank': 0, 'dist': False, 'num_gpu': 0,
                 'path': {'models': str(tmp_path / 'models'), 'training_states': str(tmp_path / 'training_states')}}
    model.optimizers, model.schedulers = [torch.optim.SGD(torch.nn.Conv2d(1, 1, 1).parameters(), lr=0.1)], []
    written: List[Path] = []
    real_save = torch.save
    monkeypatch.setattr(torch, 'save', lambda obj, f, *a, **k: (written.append(Path(f)), real_save(obj, f, *a, **k)))
    model.save_network(torch.nn.Conv2d(1, 1, 1), 'net_g', 5)
    model.save_training_state(0, 5)
    assert [(p.parent.parent.name, p.parent.name[:len('.saving-')], p.name) for p in written] == [
        ('models', '.saving-', 'net_g_5.pth'), ('training_states', '.saving-', '5.state')]
    assert not any(p.exists() or p.parent.exists() for p in written)  # renamed; the temporary folders gone
    assert set(torch.load(tmp_path / 'models' / 'net_g_5.pth')['params']) == {'weight', 'bias'}
    assert torch.load(tmp_path / 'training_states' / '5.state')['iter'] == 5


def test_wandb_project_without_wandb_is_refused_up_front(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *a: None if name == 'wandb' else real(name, *a))
    with pytest.raises(ElanError, match="logger:wandb:project is 'elan', but the wandb package is not installed"):
        startup._check_wandb({'wandb': {'project': 'elan'}, 'use_tb_logger': True})
    startup._check_wandb({'wandb': None})
    startup._check_wandb({'wandb': {'project': None, 'resume_id': None}})


def upstream_option(name: str, model_type: str, gt: str, lq: str, val_root: str) -> Dict[str, Any]:
    """An option file in the shape of BasicSR's own (``options/train/...``): ``num_gpu: 1``, a
    ``PairedImageDataset``, EMA, ``dist_params``, an empty wandb section, saved validation images."""
    return {
        'name': name, 'model_type': model_type, 'scale': 4, 'num_gpu': 1, 'manual_seed': 0,
        'datasets': {
            'train': {'name': 'DIV2K', 'type': 'PairedImageDataset', 'dataroot_gt': gt, 'dataroot_lq': lq,
                      'filename_tmpl': '{}', 'io_backend': {'type': 'lmdb'}, 'gt_size': 128, 'use_hflip': True,
                      'use_rot': True, 'num_worker_per_gpu': 0, 'batch_size_per_gpu': 2,
                      'dataset_enlarge_ratio': 1, 'prefetch_mode': None},
            'val': {'name': 'val', 'type': 'PairedImageDataset', 'dataroot_gt': f'{val_root}/GTmod12',
                    'dataroot_lq': f'{val_root}/LRbicx4', 'io_backend': {'type': 'disk'}}},
        'network_g': dict(TINY_ELAN),
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None},
        'train': {'ema_decay': 0.5, 'optim_g': {'type': 'Adam', 'lr': 2e-4, 'weight_decay': 0, 'betas': [0.9, 0.99]},
                  'scheduler': {'type': 'MultiStepLR', 'milestones': [200000], 'gamma': 0.5},
                  'total_iter': 2, 'warmup_iter': -1,
                  'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0, 'reduction': 'mean'}},
        'val': {'val_freq': 2, 'save_img': True,
                'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': 4, 'test_y_channel': False}}},
        'logger': {'print_freq': 1, 'save_checkpoint_freq': 2, 'use_tb_logger': True,
                   'wandb': {'project': None, 'resume_id': None}},
        'dist_params': {'backend': 'nccl', 'port': 29500},
    }


def as_gan(opt: Dict[str, Any]) -> Dict[str, Any]:
    """BasicSR's ESRGAN recipe with ELAN as generator (no perceptual loss: its VGG weights need a download)."""
    opt['network_d'] = {'type': 'VGGStyleDiscriminator', 'num_in_ch': 3, 'num_feat': 16}
    opt['path'].update(pretrain_network_d=None, strict_load_d=True)
    opt['train'].update({
        'optim_d': {'type': 'Adam', 'lr': 1e-4, 'weight_decay': 0, 'betas': [0.9, 0.99]},
        'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1e-2, 'reduction': 'mean'},
        'gan_opt': {'type': 'GANLoss', 'gan_type': 'vanilla', 'real_label_val': 1.0, 'fake_label_val': 0.0,
                    'loss_weight': 5e-3},
        'net_d_iters': 1, 'net_d_init_iters': 0})
    return opt


def train(root: Path, opt: Dict[str, Any], extra: List[str] = ()):
    path = root / f'{opt["name"]}.yml'
    path.write_text(yaml.safe_dump(opt, sort_keys=False))
    return run_python(['-m', 'elan_arch.cli.basicsr_cmd', 'train', '-opt', str(path), *extra], root, ENV)


@pytest.fixture(scope='module')
def root(tmp_path_factory) -> Path:
    return demo_root(tmp_path_factory.mktemp('compat'))


@pytest.mark.slow
def test_upstream_num_gpu_1_without_cuda_is_a_message(root):
    opt = upstream_option('upstream_gpu', 'SRModel', 'datasets/demo/DIV2K_train_HR_sub.lmdb',
                          'datasets/demo/DIV2K_train_LR_bicubic_X4_sub.lmdb', 'datasets/demo/val')
    result = train(root, opt)
    assert result.returncode == 2, result.stderr[-2000:]
    assert ('basicsr train: error: option num_gpu: 1, but PyTorch sees no CUDA GPU on this machine; set num_gpu: 0 '
            'to run on the CPU') in result.stderr
    assert 'Traceback' not in result.stdout + result.stderr
    assert not (root / 'experiments' / 'upstream_gpu').exists()


@pytest.mark.slow
def test_basicsr_lmdb_with_a_stale_size_trains(root):
    gt, lq = basicsr_lmdb(root / 'datasets' / 'own', pairs=4, gt_size=128)
    edit_meta(gt, 0, '(128,128,3)', '(100,128,3)')
    for dataset in ('PairedImageDataset', 'ELANPairedImageDataset'):
        opt = upstream_option(f'stale_{dataset}', 'ELANModel', str(gt), str(lq), 'datasets/demo/val')
        opt['datasets']['train']['type'] = dataset
        out = ok(train(root, opt, ['--force_yml', 'num_gpu=0']))
        assert out.count('meta_info.txt says (100, 128, 3) for img000, but the image is (128, 128, 3)') == 1
        exp = root / 'experiments' / opt['name']
        assert (exp / 'models' / 'net_g_2.pth').is_file()
        assert 'meta_info.txt says (100, 128, 3)' in next(exp.glob('train_*.log')).read_text()


@pytest.mark.slow
@pytest.mark.parametrize('model_type', ['SRGANModel', 'ESRGANModel'])
def test_gan_models_train_elan_with_a_basicsr_discriminator(root, model_type):
    opt = as_gan(upstream_option(f'gan_{model_type}', model_type, 'datasets/demo/DIV2K_train_HR_sub.lmdb',
                                 'datasets/demo/DIV2K_train_LR_bicubic_X4_sub.lmdb', 'datasets/demo/val'))
    out = ok(train(root, opt, ['--force_yml', 'num_gpu=0']))
    exp = root / 'experiments' / opt['name']
    assert {'net_g_2.pth', 'net_d_2.pth'} <= {p.name for p in (exp / 'models').iterdir()}
    assert 'l_g_gan' in out and 'l_d_real' in out
    saved_images = {p.parent.name for p in (exp / 'visualization').rglob('*.png')}  # val.save_img
    assert saved_images == {'chelsea', 'motorcycle_left'}
    saved = torch.load(exp / 'models' / 'net_g_2.pth')
    stats = [k for k in saved['params'] if k.endswith('running_mean')]
    # the basicsr command's EMA carries BatchNorm statistics for BasicSR's own models too
    assert stats and all(torch.equal(saved['params'][k], saved['params_ema'][k]) for k in stats)
    assert any(saved['params_ema'][k].abs().max() > 0 for k in stats)
    # and records its ELAN generator (deploy/checkpoint.py), not the discriminator
    assert saved['network_g'] == {'type': 'ELAN', **complete(opt['network_g'])}
    assert set(torch.load(exp / 'models' / 'net_d_2.pth')) == {'params'}


@pytest.mark.slow
def test_folder_dataset_with_filename_tmpl_and_meta_info_trains(root):
    opt = upstream_option('folders', 'SRModel', '', '', 'datasets/demo/val')
    opt['datasets']['train'] = dict(folder_dataset(root / 'datasets' / 'folders', '{}x4', meta=True),
                                    gt_size=64, use_hflip=True, use_rot=True, num_worker_per_gpu=0,
                                    batch_size_per_gpu=2, dataset_enlarge_ratio=1, phase='train')
    opt['logger']['wandb'] = None
    ok(train(root, opt, ['--force_yml', 'num_gpu=0']))
    assert (root / 'experiments' / 'folders' / 'models' / 'net_g_2.pth').is_file()
