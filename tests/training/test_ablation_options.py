"""The ablation option files (options/ablation/): one training and one test file per ``ELAN_ABLATIONS`` entry,
each the ELAN-light x4 file with exactly one network option changed (and the name, and for a test file the
weights of the matching training run), parsed by basicsr's own parser and building the intended network."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Dict

import pytest
import yaml

import elan_arch  # noqa: F401  (before basicsr)
from basicsr.archs import build_network
from basicsr.utils.options import parse_options
from elan_arch.archs.elan_arch import ELAN, ELAN_ABLATIONS, ELAN_VARIANTS

OPTIONS = Path(__file__).resolve().parents[2] / 'options'
ABLATION = OPTIONS / 'ablation'


def flat(tree: Any, prefix: str = '') -> Dict[str, Any]:
    """Nested dicts -> {'a.b.c': leaf}."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: Dict[str, Any] = {}
    for key, value in tree.items():
        out.update(flat(value, f'{prefix}.{key}' if prefix else str(key)))
    return out


def differences(path: Path, base: Path) -> Dict[str, Any]:
    """The flattened entries of ``path`` that differ from (or are missing in) ``base``, with their values."""
    mine, theirs = flat(yaml.safe_load(path.read_text())), flat(yaml.safe_load(base.read_text()))
    assert set(theirs) <= set(mine), f'{path.name} drops {sorted(set(theirs) - set(mine))}'
    return {k: v for k, v in mine.items() if k not in theirs or theirs[k] != v}


def test_one_training_and_one_test_file_per_ablation():
    expected = sorted(f'{phase}_ELAN_light_x4_{name}.yml' for phase in ('train', 'test') for name in ELAN_ABLATIONS)
    assert sorted(p.name for p in ABLATION.glob('*.yml')) == expected


@pytest.mark.parametrize('name', list(ELAN_ABLATIONS))
def test_training_file_differs_from_the_recipe_in_one_option_and_the_name(name):
    (key, value), = ELAN_ABLATIONS[name].items()
    diff = differences(ABLATION / f'train_ELAN_light_x4_{name}.yml', OPTIONS / 'train_ELAN_light_x4.yml')
    assert diff == {'name': f'ELAN_light_x4_{name}_DIV2K', f'network_g.{key}': value}


@pytest.mark.parametrize('name', list(ELAN_ABLATIONS))
def test_test_file_differs_in_the_same_option_and_reads_its_training_run(name):
    (key, value), = ELAN_ABLATIONS[name].items()
    diff = differences(ABLATION / f'test_ELAN_light_x4_{name}.yml', OPTIONS / 'test_ELAN_light_x4.yml')
    train = yaml.safe_load((ABLATION / f'train_ELAN_light_x4_{name}.yml').read_text())
    assert diff == {'name': f'test_ELAN_light_x4_{name}', f'network_g.{key}': value,
                    'path.pretrain_network_g': f'experiments/{train["name"]}/models/net_g_latest.pth'}


@pytest.mark.parametrize('phase', ['train', 'test'])
@pytest.mark.parametrize('name', list(ELAN_ABLATIONS))
def test_ablation_file_parses_and_builds_the_intended_network(name, phase, tmp_path, monkeypatch):
    path = ABLATION / f'{phase}_ELAN_light_x4_{name}.yml'
    monkeypatch.setattr(sys, 'argv', ['basicsr', '-opt', str(path)])
    opt, _ = parse_options(str(tmp_path), is_train=phase == 'train')
    net = build_network(opt['network_g'])
    expected = ELAN(upscale=4, **{**ELAN_VARIANTS['ELAN-light'], **ELAN_ABLATIONS[name]})
    assert net.state_dict().keys() == expected.state_dict().keys()
    assert all(net.state_dict()[k].shape == v.shape for k, v in expected.state_dict().items())
    for key, value in ELAN_ABLATIONS[name].items():
        attribute = {'n_share': len(net.body[0].modules_gmsa) - 1}.get(key, getattr(net, key, None))
        assert attribute == value, key
    if phase == 'train':
        assert opt['path']['experiments_root'] == str(tmp_path / 'experiments' / f'ELAN_light_x4_{name}_DIV2K')
