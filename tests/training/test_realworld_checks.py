"""Start-up checks of real-world runs (elan_arch/training/realworld_checks.py) on the options basicsr's parser
makes of the repository's real-world option files: every rule refuses with a message naming the option, and
the shipped files pass."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Dict

import pytest

import elan_arch  # noqa: F401  (before basicsr)
from elan_arch.training.realworld_checks import check_realworld_options, degraded_batch
from elan_arch.utils.errors import ElanError
from helpers.realworld import REALWORLD

FILES = sorted(path for path in REALWORLD.glob('train_*.yml') if not path.stem.endswith('_demo'))


def parsed(option: Path, *force: str, launcher: str = 'none', tmp: Path = None) -> Dict[str, Any]:
    """basicsr's ``parse_options`` of ``option`` with ``--force_yml FORCE`` (num_gpu 0 unless forced)."""
    from basicsr.utils.options import parse_options

    saved = sys.argv
    sys.argv = ['basicsr train', '-opt', str(option), '--launcher', 'none', '--force_yml', 'num_gpu=0', *force]
    try:
        opt, _ = parse_options(str(tmp or option.parent), is_train=True)
    finally:
        sys.argv = saved
    opt['dist'] = launcher != 'none'
    return opt


def test_the_option_files_are_the_four_stages_and_scales_of_both_variants():
    names = {path.name for path in FILES}
    assert names == {f'train_{variant}_{stage}_x{scale}.yml' for variant in ('ELAN', 'ELAN_light')
                     for stage in ('realesrnet', 'realesrgan') for scale in (2, 4)}


@pytest.mark.parametrize('option', FILES, ids=[path.stem for path in FILES])
def test_shipped_option_files_pass(option, tmp_path):
    opt = parsed(option, tmp=tmp_path)
    check_realworld_options(opt)
    lr_patch = opt['gt_size'] // opt['scale']
    assert lr_patch % max(opt['network_g']['window_sizes']) == 0  # whole windows on every LR patch
    assert opt['queue_size'] % opt['datasets']['train']['batch_size_per_gpu'] == 0


GAN = REALWORLD / 'train_ELAN_light_realesrgan_x4.yml'
NET = REALWORLD / 'train_ELAN_light_realesrnet_x4.yml'


@pytest.mark.parametrize('option, force, message', [
    (GAN, ['queue_size=100'], r'option queue_size: 100 is not a multiple of the batch each training step degrades '
                              r'\(12 per step.*e\.g\. queue_size: 96'),
    (GAN, ['gt_size=404'], 'option gt_size: 404 is larger than the 400x400 crops RealESRGANDataset gives'),
    (GAN, ['gt_size=66'], 'option gt_size: 66 is not a multiple of scale 4'),
    (GAN, ['gt_size=68'], 'option gt_size: 68 is not divisible by 8, which network_d UNetDiscriminatorSN needs'),
    (GAN, ['gt_size=0'], 'option gt_size: 0 must be a positive integer'),
    (NET, ['datasets:train:type=PairedImageDataset'], 'datasets:train:type PairedImageDataset gives no blur kernels'),
])
def test_each_rule_refuses_with_the_option_named(option, force, message, tmp_path):
    with pytest.raises(ElanError, match=message):
        check_realworld_options(parsed(option, *force, tmp=tmp_path))


def test_missing_degradation_options_are_named(tmp_path):
    opt = parsed(NET, tmp=tmp_path)
    del opt['jpeg_range2'], opt['gt_usm']
    with pytest.raises(ElanError, match='jpeg_range2, gt_usm are missing; copy them from options/realworld/'):
        check_realworld_options(opt)


def test_the_u_net_rule_is_for_the_gan_stage_only(tmp_path):
    check_realworld_options(parsed(NET, 'gt_size=68', 'queue_size=12', tmp=tmp_path))


def test_queue_is_checked_against_the_batch_each_process_degrades(tmp_path):
    opt = parsed(NET, 'queue_size=36', 'datasets:train:batch_size_per_gpu=12', tmp=tmp_path)
    opt['num_gpu'] = 4  # DataParallel: one batch of 48 over four GPUs
    assert degraded_batch(opt) == 48
    with pytest.raises(ElanError, match=r'\(48 over the GPUs: datasets:train:batch_size_per_gpu x num_gpu\)'):
        check_realworld_options(opt)
    opt['dist'] = True  # torchrun: each process degrades its own 12
    assert degraded_batch(opt) == 12
    check_realworld_options(opt)


def test_paired_training_and_other_models_are_not_checked(tmp_path):
    opt = parsed(NET, 'high_order_degradation=false', 'queue_size=7', 'gt_size=1000', tmp=tmp_path)
    check_realworld_options(opt)
    opt = parsed(Path(__file__).resolve().parents[2] / 'options' / 'train_ELAN_light_x4.yml', tmp=tmp_path)
    assert opt['model_type'] == 'ELANModel'
    check_realworld_options(opt)
