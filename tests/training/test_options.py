"""Every option file parses through basicsr's own parser and builds its network; the training files
carry the reference recipe of docs/elan_spec.md, the test files the five benchmarks."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

import elan_arch  # noqa: F401  (before basicsr)
from basicsr.archs import build_network
from basicsr.utils.options import parse_options
from basicsr.utils.registry import DATASET_REGISTRY, MODEL_REGISTRY

OPTIONS = Path(__file__).resolve().parents[2] / 'options'
# Trainable parameters counted on the reference code (docs/elan_spec.md).
PARAMS = {('ELAN_light', 2): 582_012, ('ELAN_light', 3): 590_127, ('ELAN_light', 4): 601_488,
          ('ELAN', 2): 8_254_092, ('ELAN', 3): 8_278_407, ('ELAN', 4): 8_312_448}
# variant: (HR patch, total batch over the reference's 4 GPUs, halving points, total iterations)
RECIPE = {'ELAN_light': (256, 64, [250_000, 400_000, 450_000, 475_000, 500_000], 1_000_000),
          'ELAN': (192, 32, [500_000, 800_000, 900_000, 950_000, 1_000_000], 2_000_000)}
BENCHMARKS = ['Set5', 'Set14', 'B100', 'Urban100', 'Manga109']
EXPECTED = sorted([f'{phase}_{variant}_x{scale}.yml' for phase in ('train', 'test') for variant, scale in PARAMS]
                  + ['train_ELAN_light_x4_demo.yml', 'test_ELAN_light_x4_demo.yml'])


def parse(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """The option dict basicsr's ``parse_options`` makes of ``path`` (as ``basicsr train|test -opt path``)."""
    monkeypatch.setattr(sys, 'argv', ['basicsr', '-opt', str(path)])
    opt, _ = parse_options(str(tmp_path), is_train=path.name.startswith('train'))
    return opt


def test_all_option_files_exist():
    assert sorted(p.name for p in OPTIONS.glob('*.yml')) == EXPECTED
    assert (OPTIONS / 'train_ELAN_x4.yml').is_file()


@pytest.mark.parametrize('name', EXPECTED)
def test_option_file_parses_and_builds_its_network(name, tmp_path, monkeypatch):
    opt = parse(OPTIONS / name, tmp_path, monkeypatch)
    assert opt['model_type'] in MODEL_REGISTRY
    for dataset in opt['datasets'].values():
        assert dataset['type'] in DATASET_REGISTRY
        assert dataset['scale'] == opt['scale']
    net = build_network(opt['network_g'])
    variant = 'ELAN' if opt['network_g']['c_elan'] == 180 else 'ELAN_light'
    assert sum(p.numel() for p in net.parameters() if p.requires_grad) == PARAMS[(variant, opt['scale'])]
    assert net.upscale == opt['scale'] and net.img_range == 255
    for metric in opt['val']['metrics'].values():
        assert metric['crop_border'] == opt['scale'] and metric['test_y_channel'] is True
    if 'demo' in name:
        assert variant == 'ELAN_light' and opt['scale'] == 4  # the real ELAN-light, not a toy
        assert all(d['dataroot_gt'].startswith('datasets/demo/') for d in opt['datasets'].values())


@pytest.mark.parametrize('variant,scale', sorted(PARAMS))
def test_training_option_is_the_reference_recipe(variant, scale, tmp_path, monkeypatch):
    opt = parse(OPTIONS / f'train_{variant}_x{scale}.yml', tmp_path, monkeypatch)
    gt_size, total_batch, milestones, total_iter = RECIPE[variant]
    train_set, train = opt['datasets']['train'], opt['train']
    assert train_set['type'] == 'ELANPairedImageDataset' and train_set['io_backend'] == {'type': 'lmdb'}
    assert train_set['dataroot_gt'] == 'datasets/DIV2K/DIV2K_train_HR_sub.lmdb'
    assert train_set['dataroot_lq'] == f'datasets/DIV2K/DIV2K_train_LR_bicubic_X{scale}_sub.lmdb'
    assert train_set['gt_size'] == gt_size // scale * scale  # 255 at x3: LR patch 85
    assert train_set['batch_size_per_gpu'] * 4 == total_batch
    assert train_set['use_hflip'] and train_set['use_rot']
    assert opt['model_type'] == 'ELANModel'
    assert train['optim_g'] == {'type': 'Adam', 'lr': 2e-4, 'weight_decay': 0, 'betas': [0.9, 0.999]}
    assert train['scheduler'] == {'type': 'MultiStepLR', 'milestones': milestones, 'gamma': 0.5}
    assert train['total_iter'] == total_iter and train['warmup_iter'] == -1
    assert train['pixel_opt']['type'] == 'L1Loss' and 'perceptual_opt' not in train
    assert train['ema_decay'] == 0 and not train['amp'] and not train['compile']
    assert opt['path']['pretrain_network_g'] is None
    val = opt['datasets']['val']
    assert (val['type'], val['dataroot_gt'], val['dataroot_lq']) == (
        'PairedImageDataset', 'datasets/Set5/GTmod12', f'datasets/Set5/LRbicx{scale}')
    assert opt['path']['experiments_root'] == str(tmp_path / 'experiments' / opt['name'])


@pytest.mark.parametrize('variant,scale', sorted(PARAMS))
def test_test_option_covers_the_five_benchmarks(variant, scale, tmp_path, monkeypatch):
    opt = parse(OPTIONS / f'test_{variant}_x{scale}.yml', tmp_path, monkeypatch)
    sets = [opt['datasets'][key] for key in sorted(opt['datasets'])]
    assert [s['name'] for s in sets] == BENCHMARKS
    for test_set in sets:
        assert test_set['dataroot_gt'] == f'datasets/{test_set["name"]}/GTmod12'
        assert test_set['dataroot_lq'] == f'datasets/{test_set["name"]}/LRbicx{scale}'
    assert opt['path']['pretrain_network_g'] == f'experiments/{variant}_x{scale}_DIV2K/models/net_g_latest.pth'
    assert opt['path']['results_root'] == str(tmp_path / 'results' / opt['name'])
