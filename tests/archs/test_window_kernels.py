"""The fused window-attention kernels (elan_arch/archs/window_kernels.py, Triton) equal the ``bmm`` form.

They are CUDA kernels; without CUDA, Triton's interpreter (``TRITON_INTERPRET=1``, set by conftest.py) runs
the very same kernels on CPU tensors, so CI checks their arithmetic without a GPU; with CUDA they run on it."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List

import pytest
import torch

import elan_arch  # noqa: F401  (before basicsr)
from elan_arch import ELAN, ELAN_VARIANTS
from elan_arch.archs import window_kernels, window_ops
from helpers.equivalence import SMALL_LIGHT, differences, photo_pair, relative, run_both
from helpers.rounding import elan_bounds, padded_pixels, pair_bound, relative_bound, within

pytestmark = pytest.mark.skipif(window_kernels.triton is None, reason='Triton is not installed')


@pytest.fixture
def device() -> torch.device:
    """Where the kernels run: the GPU, else the CPU under Triton's interpreter."""
    if torch.cuda.is_available():
        return torch.device('cuda')
    if not window_kernels.interpreting():
        pytest.skip('no CUDA, and Triton was imported before TRITON_INTERPRET was set')
    return torch.device('cpu')


def attention(proj, computing_proj, shift, fused, window_sizes=(4, 8, 16)):
    """``window_ops.gmsa_attention`` of 2 maps of 16x16 pixels: a computing GMSA's (``computing_proj``
    None), or a sharing GMSA's after its computing GMSA's."""
    orders = [window_ops.window_order(2, 16, 16, ws, shift, proj.device) for ws in window_sizes]
    shared = None
    if computing_proj is not None:
        split = [computing_proj.shape[1] // len(window_sizes)] * len(window_sizes)
        _, shared = window_ops.gmsa_attention(computing_proj, orders, window_sizes, split, None, fused)
    split = [proj.shape[1] // len(window_sizes)] * len(window_sizes)
    return window_ops.gmsa_attention(proj, orders, window_sizes, split, shared, fused)[0]


def errors_against_float64(device, shift, sharing, channels, dtype):
    """Relative errors against the ``bmm`` form in float64 of the fused kernels and of the ``bmm`` form
    in ``dtype``: per tensor (output, gradient of the computing projection[, of the sharing one]),
    and the fused kernels' gradients (for the sharing test)."""
    torch.manual_seed(channels + 2 * shift + sharing)
    pixels, groups = 2 * 16 * 16, 3
    std = (20 / channels) ** 0.5  # self-logits |q|^2 of about 20 at either width
    computing64 = std * torch.randn(pixels, groups * 2 * channels, dtype=torch.float64, device=device)
    proj64 = std * torch.randn(pixels, groups * channels, dtype=torch.float64, device=device)
    grad64 = torch.randn(pixels, groups * channels, dtype=torch.float64, device=device)
    results = {}
    for name, precision, fused in (('truth', torch.float64, False), ('bmm', dtype, False), ('fused', dtype, True)):
        computing = computing64.to(precision).requires_grad_()
        proj = proj64.to(precision).requires_grad_() if sharing else computing
        out = attention(proj, computing if sharing else None, shift, fused)
        inputs = [computing, proj] if sharing else [computing]
        results[name] = [out, *torch.autograd.grad(out, inputs, grad64.to(precision))]
    assert all(t.norm() > 0 for t in results['truth']) and results['truth'][0].std() > 0.1
    fused = [relative(a, b) for a, b in zip(results['fused'], results['truth'])]
    bmm = [relative(a, b) for a, b in zip(results['bmm'], results['truth'])]
    return fused, bmm, results['fused'][1:]


@pytest.mark.parametrize('shift', [False, True])
@pytest.mark.parametrize('sharing', [False, True])
@pytest.mark.parametrize('channels', [20, 60])  # per group: ELAN-light's and ELAN's
def test_kernels_equal_the_bmm_form(device, shift, sharing, channels):
    """Output and the gradients of both projections, 4x4, 8x8 and 16x16 windows (16, 64, 256 tokens),
    float32, against the ``bmm`` form in float64: within the rounding bound of attention (a logit, |q|^2
    of about 20, sums ``channels`` terms: its error is the maps' relative error; the output sums up to 256
    keys), or within 4x the ``bmm`` form's own float32 error where that is larger (the same terms summed in
    other blocks; the query gradient through nearly one-hot maps is ill-conditioned: a few 1e-5 in float32
    either way at 60 channels)."""
    fused, bmm, grads = errors_against_float64(device, shift, sharing, channels, torch.float32)
    bound = 20 * relative_bound(channels) + relative_bound(256)
    assert all(f < max(bound, 4 * b) for f, b in zip(fused, bmm)), (fused, bmm, bound)
    if sharing:  # the values of the computing GMSA get nothing from a sharing one
        values = torch.cat([grads[0][:, 2 * channels * g + channels:2 * channels * (g + 1)] for g in range(3)])
        assert not values.any()


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_kernels_in_half_precision(device, dtype):
    """16-bit inputs (as under autocast): logits and softmax in float32 inside the kernels; errors against
    float64 within 8x those of the ``bmm`` form in the same dtype (whose logits are float32 too; the kernels
    round the 16-bit inputs alike and add one rounding per block of keys, the online softmax's rescaling).
    Triton's interpreter has no bfloat16 arithmetic: that case runs on CUDA only."""
    if dtype == torch.bfloat16 and device.type != 'cuda':
        pytest.skip("Triton's interpreter does not implement bfloat16")
    fused, bmm, _ = errors_against_float64(device, True, True, 20, dtype)
    assert all(f < 8 * b for f, b in zip(fused, bmm)), (fused, bmm)


@contextmanager
def kernel_calls() -> Iterator[List[torch.dtype]]:
    """The dtype of the values of every call of the fused kernels' entry point inside the block."""
    calls: List[torch.dtype] = []
    original = window_kernels.fused_window_attention
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(window_kernels, 'fused_window_attention',
                      lambda q, v, *a: calls.append(v.dtype) or original(q, v, *a))
        yield calls


@pytest.mark.parametrize('variant', ['ELAN-light', 'ELAN'])
def test_network_with_fused_attention_equals_reference(device, variant):
    """The fast path with fused attention against the reference arithmetic, float32: output, input gradient
    and every parameter gradient within float32 rounding of each other (tests/helpers/rounding.py: elan_bounds,
    twice it for two computations; ELAN-light with 2 ELABs, ELAN at full width with 2 pairs)."""
    torch.manual_seed(5)
    config = SMALL_LIGHT if variant == 'ELAN-light' else dict(ELAN_VARIANTS['ELAN'], m_elan=2)
    net = ELAN(upscale=2, fused_attention=True, fast_training=True, **config).to(device)
    x, gt = (t.to(device) for t in photo_pair(2, 13, 16, batch=1))  # padded to 16 x 16 inside
    with kernel_calls() as calls:
        fast, ref = run_both(net, x, gt)
    assert calls == [torch.float32] * config['m_elan']  # every GMSA went through the kernels
    diffs, bounds = differences(fast, ref), elan_bounds(net, padded_pixels(net, x))
    assert within(diffs, {name: pair_bound(b) for name, b in bounds.items()}), (diffs, bounds)


def test_where_the_kernels_serve(device, monkeypatch):
    x = torch.rand(1, 3, 8, 8, device=device)
    assert window_kernels.available(x, [4, 8, 16])
    assert not window_kernels.available(x, [2, 4, 8])  # 2x2 windows: 4 tokens, below tl.dot's 16
    assert not window_kernels.available(x.double(), [4, 8, 16])
    assert [window_kernels.block_size(n) for n in (4, 16, 36, 48, 64, 144, 256)] == [None, 16, None, 16, 32, 16, 32]
    monkeypatch.delenv('TRITON_INTERPRET', raising=False)
    assert not window_kernels.available(x.cpu(), [4, 8, 16])  # a CPU tensor, no interpreter: the bmm form


#: Per setting, in a forked child (the settings are process-wide, and PyTorch refuses some mixes of the
#: legacy and per-backend APIs): the kernels' precision for float32 and bfloat16 inputs, or the error.
PRECISION = r"""
import json, os, sys, torch
from elan_arch.archs import window_kernels
for setting in json.loads(sys.argv[1]):
    pid = os.fork()
    if pid == 0:
        try:
            exec(setting)
            print(*(window_kernels._precision(torch.zeros(1, dtype=dtype))
                    for dtype in (torch.float32, torch.bfloat16)))
        except Exception as error:
            print('error', type(error).__name__)
        sys.stdout.flush()
        os._exit(0)
    os.waitpid(pid, 0)
"""

TF32_SETTINGS = {
    '': 'ieee',
    'torch.backends.cuda.matmul.allow_tf32 = True': 'tf32',
    "torch.set_float32_matmul_precision('high')": 'tf32',
    "torch.backends.cuda.matmul.fp32_precision = 'tf32'": 'tf32',  # get_float32_matmul_precision() raises here
    "torch.backends.cudnn.fp32_precision = 'tf32'": 'tf32',  # CUDA's setting for all operations
    "torch.backends.fp32_precision = 'tf32'": 'tf32',
    "torch.backends.fp32_precision = 'tf32'; torch.backends.cuda.matmul.fp32_precision = 'ieee'": 'ieee',
}


def test_float32_products_follow_pytorchs_tf32_settings():
    """The kernels' float32 products are TF32 exactly where PyTorch's settings (legacy or per-backend) make
    ``torch.bmm`` on CUDA TF32; 16-bit inputs keep Triton's default."""
    if getattr(torch.backends.cuda.matmul, 'fp32_precision', None) is None:
        pytest.skip('PyTorch before the per-backend precision settings')
    proc = subprocess.run([sys.executable, '-c', PRECISION, json.dumps(list(TF32_SETTINGS))], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = dict(zip(TF32_SETTINGS, proc.stdout.splitlines()))
    assert got == {setting: f'{expected} None' for setting, expected in TF32_SETTINGS.items()}


def test_fused_attention_is_an_option_not_a_weight():
    net = ELAN(upscale=2, c_elan=15, m_elan=2, window_sizes=[2, 4, 8], fused_attention=True)
    assert net.fused_attention and net.state_dict().keys() == ELAN(
        upscale=2, c_elan=15, m_elan=2, window_sizes=[2, 4, 8]).state_dict().keys()
    x = torch.rand(1, 3, 8, 8)
    out = net(x)  # the kernels do not serve here (CPU, 2x2 windows): the bmm form runs
    assert out.shape == (1, 3, 16, 16)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_network_under_autocast(device, dtype):
    """``train.amp``: under autocast the projections reach the kernels in 16 bits; the output as the fast path's
    ``bmm`` form's under the same autocast, and all gradients together within 5%. (Per parameter, 16-bit
    gradients through BatchNorm and nearly one-hot maps are noise-dominated in both forms: project_inp's
    weights differ from float32 by up to 2x either way; the kernels' arithmetic is checked by the tests above.)"""
    if dtype == torch.bfloat16 and device.type != 'cuda':
        pytest.skip("Triton's interpreter does not implement bfloat16")
    torch.manual_seed(6)
    x, gt = (t.to(device) for t in photo_pair(2, 16, 16, batch=1))
    results = []
    for fused in (True, False):
        torch.manual_seed(6)
        net = ELAN(upscale=2, fused_attention=fused, fast_training=True, **SMALL_LIGHT).to(device)
        with kernel_calls() as calls, torch.autocast(device.type, dtype=dtype):
            out = net(x)
        assert calls == ([dtype] * 4 if fused else [])
        (out.float() - gt).abs().mean().backward()
        results.append((out.float(), torch.cat([p.grad.flatten() for p in net.parameters()])))
    (out_f, grad_f), (out_b, grad_b) = results
    assert relative(out_f, out_b) < 1e-2 and relative(grad_f, grad_b) < 5e-2


#: Compiles the kernels as ``_launch`` would launch them, with the real Triton compiler down to a cubin
#: (which needs no GPU), for Hopper and Ampere, float32/bfloat16/float16, both block sizes, ELAN-light's and
#: ELAN's widths: every distinct kernel the networks launch.
COMPILE = r"""
import torch, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
import elan_arch
from elan_arch.archs import window_kernels as K
TYPES = {torch.float32: '*fp32', torch.float16: '*fp16', torch.bfloat16: '*bf16'}
I32 = ['stride_q', 'stride_v', 'stride_o', 'stride_lse', 'q_offset', 'v_offset', 'o_offset', 'lse_offset']
CONFIGS = [(arch, dtype, ws, channels)
           for arch in (90, 80) for dtype in TYPES for ws in (4, 16) for channels in (20, 60)]
for arch, dtype, ws, channels in CONFIGS:  # windows of 4x4 / 16x16: blocks of 16 / 32 tokens (8x8 as 16x16)
    group = K.Group(ws, channels, 0, channels, 0)
    _, constants = K._launch(group, ws * ws)
    warps = constants.pop('num_warps')
    constants['PRECISION'] = K._precision(torch.empty(0, dtype=dtype))
    tensor = TYPES[dtype]
    forward = dict(Q=tensor, V=tensor, O=tensor, LSE='*fp32', ORDER='*i64', **dict.fromkeys(I32, 'i32'))
    backward = dict(Q=tensor, V=tensor, DO=tensor, LSE='*fp32', DELTA='*fp32', DQ=tensor, DV=tensor, ORDER='*i64',
                    **dict.fromkeys(I32, 'i32'))
    for kernel, signature, extra in ((K._attention_forward, forward, {'STORE_LSE': True}),
                                     (K._attention_backward, backward, {})):
        names = {**constants, **extra}
        signature.update(dict.fromkeys(names, 'constexpr'))
        compiled = triton.compile(ASTSource(kernel, signature, constexprs=names), target=GPUTarget('cuda', arch, 32),
                                  options=dict(num_warps=warps))
        assert compiled.asm['cubin'], kernel
        print('compiled', kernel.__name__, arch, dtype, ws, channels)
"""


@pytest.mark.slow
def test_kernels_compile_for_gpus():
    """The interpreter does not check what the GPU compiler demands (tile shapes, dtypes of ``tl.dot``, register
    allocation): the real compiler builds both kernels here for sm_90 and sm_80, no GPU needed."""
    if torch.cuda.is_available():
        pytest.skip('with CUDA the other tests compile and run the kernels on the GPU itself')
    if importlib.util.find_spec('triton.backends.nvidia') is None:
        pytest.skip('this Triton has no NVIDIA backend')
    env = {k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}
    proc = subprocess.run([sys.executable, '-c', COMPILE], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count('compiled') == 2 * 2 * 3 * 2 * 2  # kernels x archs x dtypes x blocks x widths


def test_training_after_inference_of_the_same_shape(device):
    """The window orders are cached per shape: made under ``inference_mode`` (validation) they are inference
    tensors, which the kernels' backward must not need to save (found by the full suite's test order)."""
    net = ELAN(upscale=2, c_elan=16, m_elan=2, window_sizes=[4, 8], fused_attention=True, fast_training=True)
    x = torch.rand(1, 3, 8, 8, device=device)  # windows and a size no other test uses
    net = net.to(device)
    with torch.inference_mode():
        net.eval()(x)
    net.train()(x).mean().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_attention_speed_script_runs(monkeypatch, capsys):
    """scripts/attention_speed.py (run on GPUs by scripts/gpu_session.sh) runs end to end; on the CPU without the
    interpreter the kernels do not serve, so its table has the bmm form alone."""
    monkeypatch.delenv('TRITON_INTERPRET', raising=False)
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / 'scripts'))
    import attention_speed
    attention_speed.main(['--device', 'cpu', '--iters', '1', '--scale-down', '16'])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith('| ELAN')]
    assert len(rows) == 4 and all(line.count('|') == 5 and float(line.split('|')[4]) > 0 for line in rows)
    assert [line.split('|')[3].strip() for line in rows] == ['forward + backward', 'forward (inference)'] * 2
