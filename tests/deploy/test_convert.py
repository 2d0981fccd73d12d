"""`elan convert` and elan_arch.deploy.checkpoint: authors' format -> BasicSR, inference, refusals."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import elan_arch  # noqa: F401
from basicsr.models.sr_model import SRModel
from elan_arch.archs.elan_arch import ELAN, ELAN_VARIANTS
from elan_arch.cli import main
from elan_arch.deploy.checkpoint import infer_config, load_network_from_checkpoint
from helpers.networks import SMALL, no_temp_files, randomize, save_authors_checkpoint


@pytest.mark.parametrize('variant', ['ELAN-light', 'ELAN'])
@pytest.mark.parametrize('scale', [2, 3, 4])
def test_infer_config_recovers_every_reference_variant(variant, scale):
    sd = ELAN(upscale=scale, **ELAN_VARIANTS[variant]).state_dict()
    config = infer_config(sd)
    expected = {k: v for k, v in ELAN_VARIANTS[variant].items() if k != 'window_sizes'}
    assert config == dict(upscale=scale, colors=3, img_range=255.0, **expected)


def test_round_trip_authors_format_convert_basicsr_load_identical_output(tmp_path):
    net = randomize(ELAN(upscale=4, **ELAN_VARIANTS['ELAN-light']), weight_std=0.05).eval()
    src, dst = tmp_path / 'model_x4_1000.pt', tmp_path / 'ELAN_light_x4.pth'
    save_authors_checkpoint(net, src)
    assert main(['convert', str(src), str(dst)]) == 0
    saved = torch.load(dst, weights_only=True)
    assert list(saved) == ['params', 'network_g'] and not any(k.startswith('module.') for k in saved['params'])
    assert saved['network_g'] == {'type': 'ELAN', 'upscale': 4, 'colors': 3, **ELAN_VARIANTS['ELAN-light'],
                                  'img_range': 255.0, 'rgb_mean': [0.4488, 0.4371, 0.404], 'lfe': 'shift',
                                  'attention': 'asa', 'shift_windows': True}

    # load it the way an option file does: network_g + path.pretrain_network_g with strict_load_g
    opt = {'is_train': False, 'num_gpu': 0, 'dist': False,
           'network_g': {'type': 'ELAN', 'upscale': 4, **ELAN_VARIANTS['ELAN-light']},
           'path': {'pretrain_network_g': str(dst), 'strict_load_g': True, 'param_key_g': 'params'}}
    model = SRModel(opt)
    x = torch.rand(1, 3, 21, 18, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = net(x)
        assert torch.isfinite(expected).all() and expected.std() > 0.01
        assert torch.equal(model.net_g.eval()(x), expected)
        assert torch.equal(load_network_from_checkpoint(str(src))(x), expected)


def test_convert_command_line_prints_network_g(tmp_path):
    net = randomize(ELAN(upscale=2, **SMALL))
    src, dst = tmp_path / 'a.pt', tmp_path / 'b.pth'
    save_authors_checkpoint(net, src)
    result = subprocess.run([sys.executable, '-m', 'elan_arch', 'convert', str(src), str(dst), '--window-sizes', '2',
                             '4', '8'], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert 'type: ELAN' in result.stdout and 'c_elan: 15' in result.stdout and 'm_elan: 4' in result.stdout
    assert 'window_sizes: [2, 4, 8]' in result.stdout and 'upscale: 2' in result.stdout
    assert dst.is_file()


def test_destination_is_never_overwritten_unless_forced(tmp_path, capsys):
    src, dst = tmp_path / 'a.pt', tmp_path / 'b.pth'
    save_authors_checkpoint(randomize(ELAN(upscale=2, **SMALL)), src)
    dst.write_bytes(b'keep me')
    assert main(['convert', str(src), str(dst)]) == 2
    assert 'already exists; pass --force' in capsys.readouterr().err
    assert dst.read_bytes() == b'keep me'
    assert main(['convert', str(src), str(dst), '--force']) == 0
    assert 'params' in torch.load(dst, weights_only=True)
    assert no_temp_files(tmp_path)


def _edsr_like(path):
    torch.save({'params': {'conv_first.weight': torch.zeros(64, 3, 3, 3)}}, path)


def _wrong_tail(path):
    sd = ELAN(upscale=2, **SMALL).state_dict()
    sd['tail.0.weight'] = torch.zeros(13, 15, 3, 3)
    torch.save({'params': sd}, path)


def _missing_block_key(path):
    sd = ELAN(upscale=2, **SMALL).state_dict()
    del sd['body.1.modules_gmsa.gmsa_1.project_out.bias']
    torch.save({'params': sd}, path)


def _truncated(path):
    save_authors_checkpoint(ELAN(upscale=2, **SMALL), path)
    data = open(path, 'rb').read()
    open(path, 'wb').write(data[:len(data) // 2])


def _text(path):
    open(path, 'w').write('not a checkpoint\n')


def _pickled_object(path):
    torch.save({'params': ELAN(upscale=2, **SMALL).state_dict(), 'extra': subprocess.CompletedProcess([], 0)}, path)


@pytest.mark.parametrize('make,message', [
    (_edsr_like, "not an ELAN checkpoint, key 'head.0.weight' is missing"),
    (_wrong_tail, 'tail.0.weight has 13 output channels'),
    (_missing_block_key, "missing ['body.1.modules_gmsa.gmsa_1.project_out.bias']"),
    (_truncated, 'not a readable PyTorch checkpoint, or truncated'),
    (_text, 'not a readable PyTorch checkpoint'),
    (_pickled_object, 'pass --unsafe-load'),
])
def test_non_elan_files_are_refused_and_nothing_is_written(tmp_path, capsys, make, message):
    src, dst = tmp_path / 'src.pth', tmp_path / 'dst.pth'
    make(str(src))
    assert main(['convert', str(src), str(dst)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f'elan convert: error: {src}') and message in err
    assert not dst.exists() and no_temp_files(tmp_path)


def test_missing_source_and_scale_override_mismatch(tmp_path, capsys):
    assert main(['convert', str(tmp_path / 'nope.pt'), str(tmp_path / 'out.pth')]) == 2
    assert 'no such checkpoint file' in capsys.readouterr().err
    src = tmp_path / 'a.pt'
    save_authors_checkpoint(ELAN(upscale=2, **SMALL), src)
    assert main(['convert', str(src), str(tmp_path / 'out.pth'), '--scale', '4']) == 2
    assert 'tensor shapes do not match' in capsys.readouterr().err
    assert not (tmp_path / 'out.pth').exists()


def test_convert_help_works():
    from helpers.commands import command  # this interpreter's own elan, not PATH's (no activated venv needed)

    result = subprocess.run([*command('elan'), 'convert', '--help'], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and 'strict_load_g' in result.stdout
