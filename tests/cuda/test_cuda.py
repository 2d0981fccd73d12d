"""CUDA-only checks (skipped without a GPU, so CI never runs them; run ``pytest tests/cuda/test_cuda.py`` on a
GPU machine): the fast path in float32 and float16, tiling, ``elan upscale --device cuda --half``, and
training through ``basicsr train`` with fp16/bf16 autocast, resume and torchrun with NCCL."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from elan_arch import ELAN, ELAN_VARIANTS
from elan_arch.inference.upscale import upscale_array
from helpers.inference import calibrated, photo, to_tensor
from helpers.train import TRAIN_OPT, demo_root, ok, run_python

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')]
SMALL = ['datasets:train:gt_size=64', 'datasets:train:batch_size_per_gpu=4', 'datasets:train:num_worker_per_gpu=1',
         'logger:print_freq=1', 'train:ema_decay=0.9', 'train:scheduler:periods=[100]', 'val:val_freq=4',
         'logger:save_checkpoint_freq=4']


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR (dB) of two images in [0, 1]."""
    return float(10 * torch.log10(1 / ((a.double().clamp(0, 1) - b.double().clamp(0, 1))**2).mean()))


@pytest.fixture
def no_tf32():
    """Full float32 convolutions and matrix products (cuDNN's TF32 default rounds to 10 mantissa bits)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.parametrize('variant,scale,size', [('ELAN-light', 4, (45, 61)), ('ELAN', 2, (37, 50))])
def test_fast_path_equals_training_path_on_cuda(no_tf32, variant, scale, size):
    x = to_tensor(photo(*size))
    net = calibrated(ELAN(upscale=scale, **ELAN_VARIANTS[variant]), x).cuda()
    with torch.no_grad():
        fast = net(x.cuda())
        net.fast_inference = False
        reference = net(x.cuda())
    assert fast.shape == reference.shape == (1, 3, size[0] * scale, size[1] * scale)
    assert (fast.clamp(0, 1) - reference.clamp(0, 1)).abs().max() < 1e-4


@pytest.mark.parametrize('amp', [None, torch.bfloat16])
def test_fast_training_path_equals_reference_on_cuda(no_tf32, amp):
    """``fast_training: true`` on CUDA (off by default there): output, input gradient and every parameter
    gradient as the reference arithmetic's: in float32 1e-4 relative for output and input gradient, 1e-3 per
    parameter gradient (up to 3e-4 was measured on an H200); under bf16 autocast 3e-2 and 1e-1."""
    import copy
    import torch.nn.functional as F

    torch.manual_seed(0)
    net = ELAN(upscale=2, **dict(ELAN_VARIANTS['ELAN-light'], m_elan=4)).cuda().train()
    x = to_tensor(photo(19, 23)).repeat(2, 1, 1, 1).cuda()
    gt = F.interpolate(x, scale_factor=2, mode='bicubic', align_corners=False).clamp(0, 1)
    results = []
    for fast in (True, False):
        twin = copy.deepcopy(net)
        twin.fast_training = fast
        xi = x.clone().requires_grad_()
        with torch.autocast('cuda', dtype=amp or torch.float32, enabled=amp is not None):
            out = twin(xi)
        F.l1_loss(out.float(), gt).backward()
        results.append((out.float(), xi.grad, {n: p.grad for n, p in twin.named_parameters()}))
    (out_f, dx_f, g_f), (out_r, dx_r, g_r) = results
    tol, param_tol = (1e-4, 1e-3) if amp is None else (3e-2, 1e-1)
    rel = lambda a, b: float((a.double() - b.double()).norm() / b.double().norm())  # noqa: E731
    assert rel(out_f, out_r) < tol and rel(dx_f, dx_r) < tol
    largest = max(g.double().norm() for g in g_r.values())
    for name, g in g_r.items():
        scale = largest if name.endswith('project_inp.0.bias') else g.double().norm()
        assert float((g_f[name].double() - g.double()).norm() / scale) < param_tol, name


def test_half_precision_fast_path_is_close_to_float32(no_tf32):
    x = to_tensor(photo(96, 128))
    net = calibrated(ELAN(upscale=4), x).cuda()
    with torch.no_grad():
        full = net(x.cuda())
        half = net.half()(x.cuda().half()).float()
    assert torch.isfinite(half).all()
    assert psnr(half, full) > 45, f'half vs float32: {psnr(half, full):.1f} dB'


def test_tiled_equals_whole_image_on_cuda_when_one_tile_covers_it():
    img = photo(40, 56)
    net = calibrated(ELAN(upscale=2), to_tensor(img)).cuda()
    whole = upscale_array(net, img, 2, net.pad_multiple)
    tiled = upscale_array(net, img, 2, net.pad_multiple, tile=64, overlap=8)
    assert np.array_equal(whole, tiled)


def test_upscale_command_on_cuda_in_half_matches_cpu(tmp_path):
    img = photo(64, 80)
    net = calibrated(ELAN(upscale=4), to_tensor(img))
    torch.save({'params': net.state_dict()}, tmp_path / 'w.pth')
    cv2.imwrite(str(tmp_path / 'in.png'), (img[:, :, ::-1] * 255).round().astype(np.uint8))
    outputs = {}
    for device in (['cpu'], ['cuda', '--half']):
        out = tmp_path / f'out_{device[0]}.png'
        subprocess.run([sys.executable, '-m', 'elan_arch', 'upscale', '-i', str(tmp_path / 'in.png'), '-o', str(out),
                        '--weights', str(tmp_path / 'w.pth'), '--device', *device, '--quiet'], check=True)
        outputs[device[0]] = torch.from_numpy(cv2.imread(str(out)).astype(np.float64) / 255)
    assert outputs['cpu'].shape == (256, 320, 3)
    assert psnr(outputs['cuda'], outputs['cpu']) > 40, f'{psnr(outputs["cuda"], outputs["cpu"]):.1f} dB'


@pytest.fixture(scope='module')
def workdir(tmp_path_factory) -> Path:
    return demo_root(tmp_path_factory.mktemp('root'))


def run(argv, cwd: Path) -> str:
    """Output of ``python ARGV`` in ``cwd``, which must succeed."""
    return ok(run_python(argv, cwd, dict(os.environ, PYTHONUNBUFFERED='1')))


@pytest.mark.parametrize('amp', ['fp16', 'bf16'])
def test_train_on_cuda_with_autocast_then_resume(workdir, amp):
    name = f'cuda_{amp}'
    command = ['-m', 'elan_arch.cli.basicsr_cmd', 'train', '-opt', TRAIN_OPT]
    options = ['--force_yml', *SMALL, f'name={name}', f'train:amp={amp}']
    first = run([*command, *options, 'train:total_iter=4'], workdir)
    assert re.search(r'iter:\s+4,', first) and re.search(r'# psnr: \d+\.\d+', first)
    models = workdir / 'experiments' / name / 'models'
    state = torch.load(models / 'net_g_4.pth', map_location='cpu')
    assert all(torch.isfinite(v).all() for v in state['params'].values())
    second = run([*command, '--auto_resume', *options, 'train:total_iter=8'], workdir)
    assert 'Resuming training from epoch: 0, iter: 4' in second and re.search(r'iter:\s+8,', second)
    resumed = torch.load(workdir / 'experiments' / name / 'training_states' / '8.state', map_location='cpu')
    assert resumed['iter'] == 8
    if amp == 'fp16':  # the GradScaler's scale travels with the state
        assert resumed['grad_scaler']['scale'] > 0


def test_torchrun_uses_nccl_on_cuda(workdir):
    log = run(['-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=1', '-m', 'elan_arch.cli.basicsr_cmd',
               'train', '-opt', TRAIN_OPT, '--launcher', 'pytorch', '--force_yml', *SMALL, 'name=cuda_ddp',
               'train:total_iter=4'], workdir)
    # basicsr asks for NCCL; the CPU fallback to gloo (training/basicsr_fixes.py) must not have happened
    assert 'gloo backend' not in log and re.search(r'World size \(gpu number\): 1', log)
    assert re.search(r'iter:\s+4,', log)
    assert (workdir / 'experiments' / 'cuda_ddp' / 'models' / 'net_g_4.pth').is_file()
