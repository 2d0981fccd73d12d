"""Checkpoints of the ablation variants: ``lfe``/``attention`` inferred from the keys and loaded as trained,
window sizes and ``shift_windows`` (no trace in the weights) from what the file records or is told, and
module trees that fit no variant refused with a message naming what does not fit."""
from __future__ import annotations

import pytest
import torch

import elan_arch  # noqa: F401  (before basicsr)
from elan_arch.archs.elan_arch import ELAN, ELAN_ABLATIONS, ELAN_VARIANTS
from elan_arch.deploy.checkpoint import (convert_checkpoint, infer_config, load_checkpoint,
                                         load_network_from_checkpoint, resolve_config, variant_name)
from elan_arch.utils.errors import ElanError
from helpers.networks import randomize

SMALL_LIGHT = dict(ELAN_VARIANTS['ELAN-light'], m_elan=4)


def trained(name: str, scale: int = 2) -> ELAN:
    """A small ELAN-light (2 ELABs) with the ablation ``name`` and random weights, in eval mode."""
    return randomize(ELAN(upscale=scale, **{**SMALL_LIGHT, **ELAN_ABLATIONS[name]}), weight_std=0.05).eval()


def save_basicsr(net: ELAN, path) -> str:
    torch.save({'params': net.state_dict()}, path)
    return str(path)


@pytest.mark.parametrize('name,expected', [('no_shift', {'lfe': 'conv1x1'}), ('conv3x3', {'lfe': 'conv3x3'}),
                                           ('sa', {'attention': 'sa'}), ('no_share', {'n_share': 0}),
                                           ('share3', {'n_share': 3})])
def test_variants_in_the_weights_are_inferred_and_load_as_trained(name, expected, tmp_path):
    net = trained(name, scale=3)
    config = infer_config(net.state_dict())
    assert {k: config[k] for k in expected} == expected
    assert config['upscale'] == 3 and config['c_elan'] == 60 and config['r_expand'] == 2
    loaded = load_network_from_checkpoint(save_basicsr(net, tmp_path / 'net_g.pth'))
    assert (loaded.lfe, loaded.attention) == (net.lfe, net.attention)
    x = torch.rand(1, 3, 19, 17, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x))
    if name in ('no_shift', 'conv3x3', 'sa'):
        assert variant_name(config) == 'ELAN (custom)'


def test_the_reference_config_has_no_ablation_entries():
    config = infer_config(ELAN(upscale=4).state_dict())
    assert 'lfe' not in config and 'attention' not in config
    assert variant_name(resolve_config(ELAN(upscale=4).state_dict())) == 'ELAN-light'


@pytest.mark.parametrize('name,option', [('window16', {'window_sizes': [16]}),
                                         ('no_shift_windows', {'shift_windows': False})])
def test_options_without_a_trace_in_the_weights_come_from_the_caller_or_the_file(name, option, tmp_path):
    net = trained(name)
    src = save_basicsr(net, tmp_path / 'net_g.pth')
    x = torch.rand(1, 3, 20, 24, generator=torch.Generator().manual_seed(1))
    notes = []
    with torch.no_grad():
        expected = net(x)
        # a bare BasicSR .pth records no configuration: read as the reference's windows, and said so, unless told
        assert not torch.allclose(load_network_from_checkpoint(src, announce=notes.append)(x), expected)
        assert notes == [f'{src}: assumed window_sizes [4, 8, 16] and shifted windows: the weights cannot tell; pass '
                         '--window-sizes / --no-shift-windows or --opt FILE if the network was trained otherwise']
        told = {'window_sizes': [4, 8, 16], 'shift_windows': True, **option}
        assert torch.equal(load_network_from_checkpoint(src, announce=notes.append, **told)(x), expected)
        assert len(notes) == 1
    dst = tmp_path / 'net_g.safetensors'
    config = convert_checkpoint(src, str(dst), **option)  # this package's safetensors records them
    assert {k: config[k] for k in option} == option
    loaded, recorded, _ = load_checkpoint(str(dst))
    assert {k: recorded[k] for k in option} == option
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), expected)


def test_safetensors_records_the_inferred_kinds(tmp_path):
    net = trained('sa')
    dst = tmp_path / 'sa.safetensors'
    config = convert_checkpoint(save_basicsr(net, tmp_path / 'sa.pth'), str(dst))
    assert config['attention'] == 'sa'
    assert load_checkpoint(str(dst))[1]['attention'] == 'sa'


def test_module_trees_that_fit_no_variant_are_refused(tmp_path):
    sd = trained('sa').state_dict()
    sd['body.0.modules_gmsa.gmsa_0.project_inp.0.weight'] = torch.zeros(120, 60, 1, 1)  # 2C: ASA's width
    with pytest.raises(ElanError, match=r'project_inp\.0\.weight has 120 output channels, not 3 x c_elan = 180 '
                                        r'as standard attention \(attention: sa, with a LayerNorm\) needs'):
        infer_config(sd, 'odd.pth')
    sd = trained('conv3x3').state_dict()
    sd['body.0.modules_lfe.lfe_0.conv0.weight'] = torch.zeros(120, 60, 5, 5)
    with pytest.raises(ElanError, match=r"5x5 kernels; ELAN's LFE is a shift-convolution, a 1x1 convolution "
                                        r'\(lfe: conv1x1\) or a 3x3 one'):
        infer_config(sd, 'odd.pth')
    # an LFE of one kind in the first block and another elsewhere: not an ELAN that exists
    mixed = ELAN(upscale=2, **SMALL_LIGHT).state_dict()
    del mixed['body.1.modules_lfe.lfe_0.conv0.shift_conv.weight']
    with pytest.raises(ElanError, match=r'keys do not match ELAN.*missing \[.body\.1\.modules_lfe\.lfe_0\.conv0'):
        load_network_from_checkpoint(save_basicsr_dict(mixed, tmp_path / 'mixed.pth'))
    # a sa checkpoint whose sharing GMSA keeps ASA's BatchNorm
    odd = trained('sa').state_dict()
    odd['body.0.modules_gmsa.gmsa_1.project_inp.1.weight'] = torch.ones(60)
    with pytest.raises(ElanError, match=r'unexpected \[.body\.0\.modules_gmsa\.gmsa_1\.project_inp\.1\.weight'):
        load_network_from_checkpoint(save_basicsr_dict(odd, tmp_path / 'odd.pth'))


def save_basicsr_dict(sd, path) -> str:
    torch.save({'params': sd}, path)
    return str(path)
