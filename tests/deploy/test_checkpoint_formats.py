"""traiNNer-redux's ELAN checkpoints and safetensors (elan_arch/deploy/checkpoint_formats.py, ``elan convert``).

The traiNNer-redux files are built from the format described in docs/deploy.md (a bare
state_dict as .safetensors, optionally with their hyperparameters as JSON metadata, or
``{'metadata': ..., 'params': ...}``/a bare state_dict as .pth; no ``sub_mean``/``add_mean``
keys with their default ``norm: false``), and their outputs are checked against
``spec_forward`` (written from docs/elan_spec.md) with their [0, 1] arithmetic (``img_range=1``).
"""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import elan_arch  # noqa: F401  (before basicsr)
from elan_arch.archs.elan_arch import ELAN
from elan_arch.archs.elan_blocks import DIV2K_RGB_MEAN
from elan_arch.cli import main
from elan_arch.deploy.checkpoint import load_network_from_checkpoint
from elan_arch.deploy.checkpoint_formats import read_checkpoint
from elan_arch.inference.upscale import upscale_array
from helpers.elan_spec import spec_forward
from helpers.networks import SMALL, TINY, no_temp_files, randomize, save_authors_checkpoint
from helpers.rounding import elan_output_max_bound

HYPER = dict(scale=2, colors=3, rgb_range=255, norm=False, window_sizes=[4, 8, 16], m_elan=4, c_elan=15,
             n_share=1, r_expand=2)


def trainner_state_dict(norm: bool) -> dict:
    """Weights of a traiNNer-redux ELAN x2: the authors' key tree; with ``norm`` the frozen mean-shift
    convs hold ``eye`` and ``-/+ rgb_range * mean`` (rgb_range 255), without it they are absent.
    With ``norm`` the inputs are about -114, so smaller weights keep float32 attention meaningful."""
    sd = randomize(ELAN(upscale=2, **TINY, rgb_mean=None, img_range=1.), weight_std=0.03 if norm else 0.3).state_dict()
    assert not any('mean.' in k for k in sd)
    if norm:
        bias = 255. * torch.tensor(DIV2K_RGB_MEAN)
        sd.update({'sub_mean.weight': torch.eye(3).view(3, 3, 1, 1), 'sub_mean.bias': -bias,
                   'add_mean.weight': torch.eye(3).view(3, 3, 1, 1), 'add_mean.bias': bias})
    return sd


def save_trainner(sd: dict, path, container: str, hyper=None) -> None:
    if container == 'safetensors':
        save_file(sd, str(path), metadata=None if hyper is None else {'metadata': json.dumps(hyper)})
    elif hyper is None:
        torch.save(sd, path)
    else:
        torch.save({'metadata': hyper, 'params': sd}, path)


X = torch.rand(1, 3, 20, 29, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize('container,hyper', [('safetensors', None), ('safetensors', HYPER), ('pth', None),
                                             ('pth', HYPER)])
def test_trainner_default_checkpoint_converts_and_reproduces_their_forward(tmp_path, capsys, container, hyper):
    sd = trainner_state_dict(norm=False)
    src, dst = tmp_path / f'net_g_ema_1000.{container}', tmp_path / 'converted.pth'
    save_trainner(sd, src, container, hyper)
    expected = spec_forward(sd, X, 2, img_range=1.)  # no mean shift, [0, 1] arithmetic
    assert expected.abs().max() > 1.0  # random weights: a wrong term cannot hide
    assert read_checkpoint(str(src)).source == ('traiNNer-redux' if hyper else container.replace('pth', 'state_dict'))
    assert main(['convert', str(src), str(dst)]) == 0
    assert 'rgb_mean: null' in capsys.readouterr().out  # the network_g to write in an option file
    with torch.no_grad():
        for path in (src, dst):
            net = load_network_from_checkpoint(str(path))
            out = net(X).double()
            assert (out - expected).abs().max() < elan_output_max_bound(net, expected)  # helpers/rounding


def test_trainner_norm_true_from_metadata_or_img_range_override(tmp_path):
    sd = trainner_state_dict(norm=True)
    expected = spec_forward(sd, X, 2, img_range=1.)  # x - 255 * mean on [0, 1] inputs, no rescaling
    recorded, bare = tmp_path / 'recorded.safetensors', tmp_path / 'bare.safetensors'
    save_trainner(sd, recorded, 'safetensors', {**HYPER, 'norm': True})
    save_trainner(sd, bare, 'safetensors')
    with torch.no_grad():
        from_metadata = load_network_from_checkpoint(str(recorded))
        overridden = load_network_from_checkpoint(str(bare), img_range=1.)
        assert from_metadata.img_range == 1.
        for net in (from_metadata, overridden):
            assert (net(X).double() - expected).abs().max() < elan_output_max_bound(net, expected)  # helpers/rounding
        # without metadata the weights are indistinguishable from the authors': img_range 255 is assumed,
        # a different network
        wrong = load_network_from_checkpoint(str(bare))
        assert wrong.img_range == 255. and (wrong(X).double() - expected).abs().max() > 0.1 * expected.abs().max()


def test_upscale_reads_trainner_safetensors(tmp_path):
    sd = trainner_state_dict(norm=False)
    src = tmp_path / 'elan.safetensors'
    save_trainner(sd, src, 'safetensors')
    img = X[0].permute(1, 2, 0).numpy()
    cv2.imwrite(str(tmp_path / 'in.png'), (img[:, :, ::-1] * 255).round().astype(np.uint8))
    assert main(['upscale', '-i', str(tmp_path / 'in.png'), '-o', str(tmp_path / 'out.png'), '--weights', str(src),
                 '--quiet', '--device', 'cpu']) == 0
    lr = cv2.imread(str(tmp_path / 'in.png'))[:, :, ::-1].astype(np.float32) / 255.
    net = ELAN(upscale=2, **TINY, rgb_mean=None, img_range=1.)
    net.load_state_dict(sd)
    assert np.array_equal(cv2.imread(str(tmp_path / 'out.png'))[:, :, ::-1], upscale_array(net.eval(), lr, 2, 16))


def test_safetensors_round_trip_keeps_weights_and_settings(tmp_path, capsys):
    net = randomize(ELAN(upscale=3, **SMALL)).eval()  # window sizes 2, 4, 8: not the default
    src, dst = tmp_path / 'model_x3_10.pt', tmp_path / 'elan_x3.safetensors'
    save_authors_checkpoint(net, src)
    assert main(['convert', str(src), str(dst), '--window-sizes', '2', '4', '8']) == 0
    assert 'safetensors' in capsys.readouterr().out
    with safe_open(str(dst), framework='pt') as f:
        saved = {k: f.get_tensor(k) for k in f.keys()}
        network_g = json.loads(f.metadata()['network_g'])
    reference = net.state_dict()
    assert saved.keys() == reference.keys()
    assert all(torch.equal(saved[k], reference[k]) and saved[k].dtype == reference[k].dtype for k in saved)
    assert network_g['type'] == 'ELAN' and network_g['window_sizes'] == [2, 4, 8] and network_g['upscale'] == 3
    with torch.no_grad():  # the recorded window sizes are used without being given again
        assert torch.equal(load_network_from_checkpoint(str(dst))(X), net(X))
    # and back to BasicSR's format: the same tensors again
    back = tmp_path / 'back.pth'
    assert main(['convert', str(dst), str(back)]) == 0
    assert all(torch.equal(v, reference[k]) for k, v in torch.load(back, weights_only=True)['params'].items())
    assert no_temp_files(tmp_path)


def test_safetensors_recognised_by_content_and_damage_reported(tmp_path, capsys):
    sd = trainner_state_dict(norm=False)
    misnamed = tmp_path / 'model.pth'
    save_file(sd, str(misnamed))
    assert read_checkpoint(str(misnamed)).source == 'safetensors'
    damaged = tmp_path / 'damaged.safetensors'
    damaged.write_bytes(misnamed.read_bytes()[:len(misnamed.read_bytes()) // 2])
    assert main(['convert', str(damaged), str(tmp_path / 'out.pth')]) == 2
    assert f'{damaged}: not a readable safetensors file' in capsys.readouterr().err
    assert not (tmp_path / 'out.pth').exists()
