"""ELAN in spandrel (elan_arch/deploy/spandrel_arch.py): the loader opens the authors', BasicSR's and
traiNNer-redux's ELAN files with the right descriptor and output, and still detects other
architectures as themselves."""
from __future__ import annotations

import pytest
import spandrel
import torch
from safetensors.torch import save_file

import elan_arch.spandrel_support  # noqa: F401  (the documented one-liner)
from basicsr.archs.edsr_arch import EDSR
from elan_arch import ELAN
from elan_arch.deploy.spandrel_arch import ELANArch, install
from helpers.inference import calibrated, photo, to_tensor
from helpers.networks import TINY
from helpers.networks import save_authors_checkpoint

X = to_tensor(photo(21, 30))


def save_authors(net, path):
    save_authors_checkpoint(net, path)


def save_basicsr(net, path):
    torch.save({'params_ema': net.state_dict()}, path)


def save_trainner_safetensors(net, path):
    save_file(net.state_dict(), str(path))


def save_trainner_pth(net, path):
    torch.save(net.state_dict(), path)


@pytest.mark.parametrize('save,name,scale,trainner', [
    (save_authors, 'model_x3_1000.pt', 3, False),
    (save_basicsr, 'ELAN_x2.pth', 2, False),
    (save_trainner_safetensors, 'net_g_ema_5000.safetensors', 4, True),
    (save_trainner_pth, 'net_g_5000.pth', 2, True),
])
def test_loader_opens_every_format_with_right_descriptor_and_output(tmp_path, save, name, scale, trainner):
    extra = dict(rgb_mean=None, img_range=1.) if trainner else {}
    torch.manual_seed(scale)  # the output spread checked below depends on the random weights
    net = calibrated(ELAN(upscale=scale, **TINY, **extra), X)
    save(net, tmp_path / name)
    model = spandrel.ModelLoader().load_from_file(tmp_path / name)
    assert isinstance(model, spandrel.ImageModelDescriptor) and model.architecture.id == 'ELAN'
    assert isinstance(model.model, ELAN) and model.model.img_range == net.img_range
    assert model.scale == scale and model.input_channels == model.output_channels == 3 and model.purpose == 'SR'
    assert model.size_requirements.none  # ELAN reflect-pads any size itself, as the reference does
    assert model.tiling == spandrel.ModelTiling.SUPPORTED and model.supports_half and model.supports_bfloat16
    with torch.no_grad():
        expected = net.eval()(X)
    assert expected.std() > 0.1
    assert torch.equal(model(X), expected.clamp(0, 1))  # the descriptor clamps to [0, 1]
    bf16 = model.to(torch.bfloat16)(X.to(torch.bfloat16)).float()
    # bfloat16 runs (8-bit mantissa; these random networks' outputs span about -2..3 before clamping)
    assert (bf16 - expected.clamp(0, 1)).abs().mean() < 0.05


def spandrel_swinir():
    from spandrel.architectures.SwinIR import SwinIR
    return SwinIR(upscale=2, img_size=16, window_size=8, depths=[2], num_heads=[2], embed_dim=16, mlp_ratio=2,
                  upsampler='pixelshuffledirect', resi_connection='1conv')


def spandrel_safmn():
    from spandrel.architectures.SAFMN import SAFMN
    return SAFMN(dim=12, n_blocks=2, upscaling_factor=3)


def spandrel_rcan():  # RCAN shares head.0/tail/sub_mean/add_mean key names with ELAN
    from spandrel.architectures.RCAN import RCAN
    return RCAN(scale=2, n_resgroups=1, n_resblocks=1, n_feats=16, reduction=4)


@pytest.mark.parametrize('build,arch', [(spandrel_swinir, 'SwinIR'), (spandrel_safmn, 'SAFMN'),
                                        (spandrel_rcan, 'RCAN')])
def test_spandrels_own_architectures_are_still_detected_as_themselves(tmp_path, build, arch):
    install()  # a second call changes nothing
    path = tmp_path / f'{arch}.pth'
    torch.save({'params': build().state_dict()}, path)
    assert spandrel.ModelLoader().load_from_file(path).architecture.id == arch


def test_edsr_is_not_mistaken_for_elan(tmp_path):
    # spandrel 0.4.2 has no EDSR: it must stay unsupported, not become an ELAN
    path = tmp_path / 'EDSR_x2.pth'
    torch.save({'params': EDSR(3, 3, num_feat=16, num_block=2, upscale=2).state_dict()}, path)
    assert not ELANArch().detect(torch.load(path)['params'])
    with pytest.raises(spandrel.UnsupportedModelError):
        spandrel.ModelLoader().load_from_file(path)
