"""ELANModel in-process on CPU with a small ELAN: EMA with BatchNorm buffers (against basicsr's own
EMA), tiled and self-ensemble testing, validation of odd-sized images, AMP, torch.compile, and ELAN
as the generator of basicsr's SRModel / SRGANModel / ESRGANModel."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Dict

import cv2
import numpy as np
import pytest
import torch
from torch import nn

import elan_arch  # noqa: F401  (before basicsr)
from basicsr.data import build_dataloader, build_dataset
from basicsr.metrics import calculate_psnr
from basicsr.models import build_model
from basicsr.utils import tensor2img
from elan_arch.utils.errors import ElanError
from elan_arch.inference.upscale import upscale_array
from elan_arch.models.eval_modes import self_ensemble

SMALL_ELAN = dict(type='ELAN', upscale=4, c_elan=15, m_elan=4, n_share=1, r_expand=2, window_sizes=[4, 8, 16])


def make_opt(tmp_path: Path, model_type: str = 'ELANModel', **train: Any) -> Dict[str, Any]:
    """An option dict as basicsr's ``parse_options`` returns it, for training on CPU."""
    exp = tmp_path / 'experiments' / 'unit'
    for sub in ('models', 'training_states'):
        (exp / sub).mkdir(parents=True, exist_ok=True)
    opt = {
        'name': 'unit', 'model_type': model_type, 'scale': 4, 'num_gpu': 0, 'dist': False, 'rank': 0,
        'world_size': 1, 'is_train': True, 'manual_seed': 0, 'network_g': dict(SMALL_ELAN),
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None,
                 'experiments_root': str(exp), 'models': str(exp / 'models'),
                 'training_states': str(exp / 'training_states'), 'log': str(exp),
                 'visualization': str(exp / 'visualization')},
        'train': {'ema_decay': 0, 'optim_g': {'type': 'Adam', 'lr': 1e-3}, 'total_iter': 10,
                  'scheduler': {'type': 'MultiStepLR', 'milestones': [5], 'gamma': 0.5},
                  'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0, 'reduction': 'mean'}, **train},
        'val': {'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': 4, 'test_y_channel': True}}},
    }
    return opt


def batch(seed: int = 0, lq_size: int = 16, n: int = 2) -> Dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    lq = torch.rand(n, 3, lq_size, lq_size, generator=gen)
    return {'lq': lq, 'gt': torch.nn.functional.interpolate(lq, scale_factor=4, mode='bicubic').clamp(0, 1)}


def train_steps(model: Any, steps: int = 3) -> None:
    for step in range(1, steps + 1):
        model.feed_data(batch(step))
        model.optimize_parameters(step)


def bn_buffers(net: nn.Module) -> Dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in net.state_dict().items() if 'running_' in k}


def test_ema_carries_batchnorm_statistics(tmp_path):
    torch.manual_seed(0)
    model = build_model(make_opt(tmp_path, ema_decay=0.9))
    train_steps(model)
    trained = bn_buffers(model.net_g)
    assert trained and all(name.endswith(('running_mean', 'running_var')) for name in trained)
    assert any(v.abs().max() > 0.01 for k, v in trained.items() if k.endswith('running_mean'))
    ema = bn_buffers(model.net_g_ema)
    assert all(torch.equal(ema[k], trained[k]) for k in trained)
    # parameters are still averaged, not copied
    assert not torch.equal(model.net_g_ema.head[0].weight, model.net_g.head[0].weight)
    model.save(0, 3)
    saved = torch.load(tmp_path / 'experiments/unit/models/net_g_3.pth')
    assert all(torch.equal(saved['params_ema'][k], trained[k]) for k in trained)


def test_basicsr_ema_alone_keeps_initial_statistics(tmp_path):
    """What ELANModel fixes: SRModel's EMA network validates with the initial BatchNorm statistics."""
    torch.manual_seed(0)
    model = build_model(make_opt(tmp_path, model_type='SRModel', ema_decay=0.9))
    train_steps(model)
    ema = bn_buffers(model.net_g_ema)
    assert all(torch.all(v == 0) for k, v in ema.items() if k.endswith('running_mean'))
    assert not all(torch.equal(ema[k], v) for k, v in bn_buffers(model.net_g).items())


def test_tiled_validation_matches_whole_images_when_one_tile_covers_them(tmp_path):
    opt = make_opt(tmp_path)
    opt['val']['tile'] = {'size': 48, 'overlap': 8}  # one tile covers the 29 x 37 input
    torch.manual_seed(0)
    model = build_model(opt)
    lq = torch.rand(2, 3, 29, 37)
    tiled = model.upscale(lq)
    with torch.no_grad():
        whole = model.get_bare_model(model.net_g).eval()(lq).clamp(0, 1)
    torch.testing.assert_close(tiled, whole, rtol=0, atol=1e-5)


def test_self_ensemble_is_the_mean_over_the_dihedral_group():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 12, 3, padding=1), nn.PixelShuffle(2))  # not flip-equivariant
    x = torch.rand(1, 3, 6, 9)
    with torch.no_grad():
        got = self_ensemble(net, x)
        # independent construction: 4 rotations x optional mirror, each undone on the output
        outs = []
        for k in range(4):
            for mirror in (False, True):
                t = torch.rot90(torch.flip(x, [-1]) if mirror else x, k, [-2, -1])
                y = torch.rot90(net(t), -k, [-2, -1])
                outs.append(torch.flip(y, [-1]) if mirror else y)
        torch.testing.assert_close(got, torch.stack(outs).mean(0), rtol=0, atol=1e-6)
        assert not torch.allclose(got, net(x), atol=1e-3)


def write_val_set(root: Path, sizes=((29, 37), (21, 18))) -> Dict[str, Any]:
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(sizes):
        lq = cv2.GaussianBlur(rng.uniform(0, 255, (h, w, 3)).astype(np.uint8), (3, 3), 0)
        (root / 'lq').mkdir(parents=True, exist_ok=True)
        (root / 'gt').mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / 'lq' / f'im{i}.png'), lq)
        cv2.imwrite(str(root / 'gt' / f'im{i}.png'), cv2.resize(lq, (w * 4, h * 4), interpolation=cv2.INTER_CUBIC))
    return {'name': 'odd', 'type': 'PairedImageDataset', 'dataroot_gt': str(root / 'gt'),
            'dataroot_lq': str(root / 'lq'), 'io_backend': {'type': 'disk'}, 'phase': 'val', 'scale': 4}


@pytest.mark.parametrize('val_extra', [{}, {'tile': {'size': 16, 'overlap': 4}}, {'self_ensemble': True}])
def test_validation_on_odd_sized_images(tmp_path, val_extra):
    opt = make_opt(tmp_path)
    opt['val'].update(val_extra)
    torch.manual_seed(0)
    model = build_model(opt)
    loader = build_dataloader(build_dataset(write_val_set(tmp_path)), {'phase': 'val'})
    model.validation(loader, 1, None, save_img=False)
    assert model.net_g.training  # back to training mode
    # independent: upscale each image with the eval network as configured, score it
    psnrs = []
    net = copy.deepcopy(model.net_g).eval()
    for data in loader:
        with torch.no_grad():
            if val_extra.get('tile'):
                out = upscale_array(net, data['lq'][0].permute(1, 2, 0).numpy(), 4, 16, tile=16, overlap=4,
                                    out_dtype=np.float32)
                out = torch.from_numpy(out).permute(2, 0, 1)[None]
            else:
                out = self_ensemble(net, data['lq']) if val_extra.get('self_ensemble') else net(data['lq'])
        assert out.shape == data['gt'].shape
        psnrs.append(calculate_psnr(tensor2img(out), tensor2img(data['gt']), 4, test_y_channel=True))
    assert model.metric_results['psnr'] == pytest.approx(np.mean(psnrs), abs=1e-9)


@pytest.mark.parametrize('amp', ['bf16', 'fp16'])
def test_mixed_precision_step(tmp_path, amp):
    torch.manual_seed(0)
    model = build_model(make_opt(tmp_path, amp=amp))
    before = copy.deepcopy(model.net_g.state_dict())
    train_steps(model, 2)
    assert np.isfinite(model.log_dict['l_pix'])
    assert model.output.dtype == torch.float32
    assert not torch.equal(before['head.0.weight'], model.net_g.state_dict()['head.0.weight'])
    assert model.grad_scaler.is_enabled() == (amp == 'fp16')


def test_fp16_gradient_scaler_state_is_saved_and_resumed(tmp_path):
    torch.manual_seed(0)
    model = build_model(make_opt(tmp_path, amp='fp16'))
    train_steps(model, 2)
    model.grad_scaler.update(new_scale=1234.5)  # a scale no fresh scaler has
    model.save_training_state(epoch=0, current_iter=2)
    states = tmp_path / 'experiments' / 'unit' / 'training_states'
    assert [p.name for p in states.iterdir()] == ['2.state']  # no temporary file left
    state = torch.load(states / '2.state', weights_only=False)
    assert state['iter'] == 2 and len(state['optimizers']) == len(state['schedulers']) == 1
    resumed = build_model(make_opt(tmp_path, amp='fp16'))
    assert resumed.grad_scaler.get_scale() != 1234.5
    resumed.resume_training(state)
    assert resumed.grad_scaler.get_scale() == 1234.5
    assert resumed.optimizers[0].state_dict()['state'][0]['step'] == 2
    plain = build_model(make_opt(tmp_path / 'plain'))
    plain.save_training_state(epoch=0, current_iter=3)
    assert 'grad_scaler' not in torch.load(tmp_path / 'plain' / 'experiments' / 'unit' / 'training_states' / '3.state',
                                           weights_only=False)


def test_compiled_training_keeps_state_dict_keys(tmp_path):
    torch.manual_seed(0)
    plain = build_model(make_opt(tmp_path))
    torch.manual_seed(0)
    compiled = build_model(make_opt(tmp_path, compile={'backend': 'eager'}))
    assert compiled.net_g_train is not compiled.net_g
    train_steps(plain, 2)
    train_steps(compiled, 2)
    assert list(compiled.net_g.state_dict()) == list(plain.net_g.state_dict())
    for key, value in plain.net_g.state_dict().items():
        torch.testing.assert_close(compiled.net_g.state_dict()[key], value, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('option,value,message', [
    ('amp', 'fp8', 'train.amp'),
    ('tile', {'size': 0}, 'val.tile'),
    ('tile', {'size': 16, 'overlap': 16}, 'val.tile.overlap'),
])
def test_bad_options_name_themselves(tmp_path, option, value, message):
    opt = make_opt(tmp_path)
    (opt['train'] if option == 'amp' else opt['val'])[option] = value
    with pytest.raises(ElanError, match=message):
        build_model(opt)


def test_plain_srmodel_trains_and_validates_elan(tmp_path):
    torch.manual_seed(0)
    model = build_model(make_opt(tmp_path, model_type='SRModel'))
    before = copy.deepcopy(model.net_g.state_dict())
    train_steps(model, 2)
    assert not torch.equal(before['tail.0.weight'], model.net_g.state_dict()['tail.0.weight'])
    model.validation(build_dataloader(build_dataset(write_val_set(tmp_path)), {'phase': 'val'}), 2, None, False)
    assert np.isfinite(model.metric_results['psnr'])


@pytest.mark.parametrize('model_type', ['SRGANModel', 'ESRGANModel'])
def test_elan_as_gan_generator(tmp_path, model_type):
    opt = make_opt(tmp_path, model_type=model_type, ema_decay=0)
    opt['network_d'] = {'type': 'VGGStyleDiscriminator', 'num_in_ch': 3, 'num_feat': 8, 'input_size': 128}
    opt['train'].update(optim_d={'type': 'Adam', 'lr': 1e-4},
                        gan_opt={'type': 'GANLoss', 'gan_type': 'vanilla', 'loss_weight': 5e-3})
    torch.manual_seed(0)
    model = build_model(opt)
    gen_before = copy.deepcopy(model.net_g.state_dict())
    disc_before = copy.deepcopy(model.net_d.state_dict())
    for step in (1, 2):
        model.feed_data(batch(step, lq_size=32))
        model.optimize_parameters(step)
    assert type(model.net_g).__name__ == 'ELAN'
    assert not torch.equal(gen_before['head.0.weight'], model.net_g.state_dict()['head.0.weight'])
    assert not torch.equal(disc_before['conv0_0.weight'], model.net_d.state_dict()['conv0_0.weight'])
    assert {'l_g_pix', 'l_g_gan', 'l_d_real', 'l_d_fake'} <= set(model.log_dict)
