"""Every option file parses through basicsr's own parser and builds its network; the training files
carry the reference recipe of docs/elan_spec.md, the test files the five benchmarks."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import elan_arch  # noqa: F401  (before basicsr)
from basicsr.archs import build_network
from basicsr.utils.options import parse_options
from basicsr.utils.registry import DATASET_REGISTRY, MODEL_REGISTRY
from elan_arch.utils.errors import ElanError
from helpers.commands import command
from helpers.train import TEST_ENV

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


def test_force_yml_drops_a_data_set():
    """``--force_yml datasets:NAME=~`` drops that set (basicsr's parser set it to None and failed on it)."""
    from elan_arch.training.startup import drop_datasets, take_dropped_datasets

    argv = ['-opt', 'x.yml', '--force_yml', 'datasets:test_2=~', 'name=a', 'datasets:test_3 = null', '--debug']
    assert take_dropped_datasets(argv) == (['-opt', 'x.yml', '--force_yml', 'name=a', '--debug'], ['test_2', 'test_3'])
    assert take_dropped_datasets(['-opt', 'x.yml', '--force_yml', 'datasets:test_2=~']) == (['-opt', 'x.yml'],
                                                                                           ['test_2'])
    kept = ['-opt', 'x.yml', '--force_yml', 'datasets:test_2:dataroot_gt=~', 'val=~']  # not a whole set
    assert take_dropped_datasets(kept) == (kept, [])
    opt = {'datasets': {'test_1': {}, 'test_2': {}}}
    drop_datasets(opt, ['test_2'])
    assert list(opt['datasets']) == ['test_1']
    with pytest.raises(ElanError, match=r"--force_yml datasets:test_9=~: the option file has no data set 'test_9' "
                                        r'\(it has test_1\)'):
        drop_datasets(opt, ['test_9'])


def test_basicsr_test_with_a_dropped_data_set_goes_on_to_the_others(tmp_path):
    """The real command: the dropped set is gone (the first missing files named are the next set's), no
    TypeError; dropping the only set is the empty-datasets message."""
    option = str(OPTIONS / 'ablation' / 'test_ELAN_light_x4_window8.yml')
    result = subprocess.run([*command('basicsr'), 'test', '-opt', option, '--force_yml', 'datasets:test_1=~'],
                            cwd=tmp_path, env=TEST_ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2 and 'Traceback' not in result.stdout + result.stderr, result.stderr
    assert 'dataset Set14: dataroot_gt datasets/Set14/GTmod12' in result.stderr, result.stderr
    demo = str(OPTIONS / 'test_ELAN_light_x4_demo.yml')
    result = subprocess.run([*command('basicsr'), 'test', '-opt', demo, '--force_yml', 'datasets:test_1=~'],
                            cwd=tmp_path, env=TEST_ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2 and 'option datasets is empty' in result.stderr, result.stderr
    assert list(tmp_path.iterdir()) == []
