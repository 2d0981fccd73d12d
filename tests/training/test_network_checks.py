"""elan_arch/training/network_checks.py: a misspelt network option and weights of another scale or variant
are one-line messages at start-up (basicsr: a TypeError, or pages of "size mismatch" once the folders exist)."""
from __future__ import annotations

import copy
import re
import subprocess

import pytest
import torch

import elan_arch  # noqa: F401  (before basicsr)
import basicsr.archs  # noqa: F401  (registers basicsr's own archs: EDSR, ...)
from elan_arch import ELAN, ELAN_VARIANTS
from elan_arch.training.network_checks import check_network_options, pretrained_mismatch
from elan_arch.utils.errors import ElanError
from helpers.commands import command
from helpers.train import TEST_ENV, TEST_OPT, TRAIN_OPT, demo_root

LIGHT_X4 = {'type': 'ELAN', 'upscale': 4, 'c_elan': 60, 'm_elan': 24, 'n_share': 1, 'r_expand': 2}
EDSR = {'type': 'EDSR', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 16, 'num_block': 2, 'upscale': 4}


def options(network: dict, **path) -> dict:
    return {'network_g': copy.deepcopy(network), 'path': {'pretrain_network_g': 'w.pth', **path}}


@pytest.mark.parametrize('network,message', [
    ({**LIGHT_X4, 'c_elann': 60}, "option network_g:c_elann: ELAN has no option 'c_elann' (did you mean c_elan?); "
                                  'its options are upscale, colors, c_elan, m_elan'),
    ({**EDSR, 'num_feats': 16}, "option network_g:num_feats: EDSR has no option 'num_feats' (did you mean num_feat?)"),
    ({k: v for k, v in EDSR.items() if k != 'num_in_ch'}, 'option network_g: EDSR needs num_in_ch'),
])
def test_unknown_or_missing_network_options_are_named(network, message):
    with pytest.raises(ElanError) as caught:
        check_network_options(options(network))
    assert str(caught.value).startswith(message)


def test_valid_network_options_pass():
    check_network_options(options(LIGHT_X4))
    check_network_options(options(EDSR))
    check_network_options({'network_g': {'type': 'NotRegistered', 'x': 1}})  # the registry check names it


@pytest.mark.parametrize('network,rule', [
    ({**LIGHT_X4, 'window_sizes': [4, 8, 15]}, 'ELAN: window_sizes must be positive even integers'),
    ({**LIGHT_X4, 'n_share': 4}, 'ELAN: m_elan=24 must be a positive multiple of 1 + n_share=5'),
    ({**LIGHT_X4, 'c_elan': 61}, 'ELAN: c_elan=61 must be divisible by len(window_sizes)=3'),
    ({**EDSR, 'num_feat': 'wide'}, ''),  # a TypeError inside the constructor: its own words
])
def test_values_the_constructor_refuses_are_its_rule(network, rule):
    with pytest.raises(ElanError, match=r'^option network_g: ' + re.escape(rule)):
        check_network_options(options(network))


def state(upscale: int, variant: str = 'ELAN-light') -> dict:
    return ELAN(upscale=upscale, **ELAN_VARIANTS[variant]).state_dict()


def test_weights_of_another_scale_or_variant_are_named():
    x2 = pretrained_mismatch(options(LIGHT_X4), 'pretrain_network_g', {'params': state(2)})
    assert x2.startswith('holds ELAN-light x2, but network_g configures ELAN-light x4: upscale 2 in the file, 4 '
                         'configured. Use weights of the configured network') and 'strict_load_g: false' in x2
    full = pretrained_mismatch(options(LIGHT_X4, param_key_g='params_ema'), 'pretrain_network_g',
                               {'params_ema': state(4, 'ELAN')})
    assert full.startswith('holds ELAN x4, but network_g configures ELAN-light x4: c_elan 180 in the file, 60 '
                           'configured; m_elan 36 in the file, 24 configured; n_share 0 in the file, 1 configured.')
    assert pretrained_mismatch(options(LIGHT_X4), 'pretrain_network_g', {'params_ema': state(4)}).startswith(
        "has no 'params' entry (it has params_ema): set path:param_key_g")
    assert 'not hold an ELAN' in pretrained_mismatch(options(LIGHT_X4), 'pretrain_network_g',
                                                      {'params': torch.nn.Conv2d(3, 3, 3).state_dict()})


def test_weights_that_fit_or_load_loosely_pass():
    module_prefixed = {f'module.{k}': v for k, v in state(4).items()}  # saved from a DDP-wrapped network
    assert pretrained_mismatch(options(LIGHT_X4, param_key_g='params_ema'), 'pretrain_network_g',
                               {'params': module_prefixed}) is None
    assert pretrained_mismatch(options(LIGHT_X4, strict_load_g=False), 'pretrain_network_g',
                               {'params': state(2)}) is None  # basicsr loads what fits: x2 to start x4
    assert pretrained_mismatch(options(EDSR), 'pretrain_network_g', {'params': state(2)}) is None  # not an ELAN


@pytest.fixture(scope='module')
def demo(tmp_path_factory):
    return demo_root(tmp_path_factory.mktemp('root'))


@pytest.mark.parametrize('subcommand', ['train', 'test'])
@pytest.mark.parametrize('change,rule', [
    (['network_g:window_sizes=[4,8,15]'], 'window_sizes must be positive even integers (shifted windows roll by '
                                          'half a window), got [4, 8, 15]'),
    (['network_g:n_share=4', 'network_g:m_elan=24'], 'm_elan=24 must be a positive multiple of 1 + n_share=5'),
])
def test_values_the_constructor_refuses_stop_basicsr_before_any_folder(demo, subcommand, change, rule):
    """The real ``basicsr`` command: the constructor's rule as the message, exit 2, no traceback, and neither
    ``experiments/`` nor ``results/`` made."""
    option = TRAIN_OPT if subcommand == 'train' else TEST_OPT
    result = subprocess.run([*command('basicsr'), subcommand, '-opt', option, '--force_yml', *change], cwd=demo,
                            env=TEST_ENV, capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert f'option network_g: ELAN: {rule}' in result.stderr and 'Traceback' not in output, output
    assert sorted(p.name for p in demo.iterdir()) == ['datasets']
