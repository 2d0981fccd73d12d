"""The fast training path (elan_arch/archs/elan_fast.py under autograd) equals the reference arithmetic:
outputs, input gradients, every parameter gradient, BatchNorm running statistics and optimizer steps."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import elan_arch  # noqa: F401  (before basicsr)
from elan_arch import ELAN, ELAN_VARIANTS
from elan_arch.archs import elan_fast, fast_ops, window_ops
from helpers.equivalence import (SMALL_LIGHT, check_float32_against_float64, compare, forward_backward,
                                 photo_pair, relative, twin)
from helpers.rounding import (EPS64, EPS_BF16, AdamStepBounds, BatchNormMagnitudes, elan_bounds, padded_pixels,
                              pair_bound, relative_bound, sum_bound, within)


@pytest.mark.parametrize('scale', [2, 3, 4])
@pytest.mark.parametrize('variant', ['ELAN-light', 'ELAN'])
def test_fast_training_path_equals_reference(variant, scale):
    """Relative differences (Euclidean norm of the difference over the norm, per tensor) of output,
    input gradient and every parameter gradient: float64 paths equal within float64 rounding, each
    float32 path within float32 rounding of the float64 result (helpers.rounding.elan_bounds: a
    gradient sums N = 2 x 32 x 32 pixels of K = 9 c_elan-term products, eps32 sqrt(N K), 1.3e-4 for
    ELAN-light and 2.2e-4 for ELAN). ELAN is tested at full width (180 channels, no sharing) and a sixth of
    its depth (6 of 36 pairs, shifted and unshifted blocks), ELAN-light at full size."""
    torch.manual_seed(scale)
    net = ELAN(upscale=scale, **dict(ELAN_VARIANTS[variant], **({'m_elan': 6} if variant == 'ELAN' else {})))
    x, gt = photo_pair(scale, 19, 23)  # odd sizes: padded to 32 x 32 inside; shifted and unshifted blocks
    check_float32_against_float64(net, x, gt)


def test_other_window_sizes_and_channel_split():
    # c_elan 15: shift groups of 3, attention groups of 10 (q 5, v 5) and 5 (v only); windows 2/4/8
    torch.manual_seed(1)
    net = ELAN(upscale=2, c_elan=15, m_elan=6, n_share=2, r_expand=3, window_sizes=[2, 4, 8]).double()
    x, gt = photo_pair(2, 11, 9)
    diffs = compare(net, x.double(), gt.double())
    bounds = elan_bounds(net, padded_pixels(net, x), EPS64)  # two float64 computations: twice the bound
    assert within(diffs, {name: pair_bound(b) for name, b in bounds.items()}), (diffs, bounds)


@pytest.mark.parametrize('mutation', ['shift_backward_not_flipped', 'window_roll_ignored', 'no_map_sharing',
                                      'batchnorm_without_batch_statistics'])
def test_a_mutated_fast_path_is_caught(monkeypatch, mutation):
    torch.manual_seed(0)
    net = ELAN(upscale=2, **SMALL_LIGHT).double()
    x, gt = photo_pair(2, 16, 16)
    if mutation == 'shift_backward_not_flipped':  # the backward shifts the same way as the forward
        monkeypatch.setattr(fast_ops.Shift, 'backward',
                            staticmethod(lambda ctx, grad: (fast_ops.Shift.apply(grad, ctx.kernel), None)))
    elif mutation == 'window_roll_ignored':  # shifted blocks attend in unshifted windows
        # (rolling by +ws/2 instead of -ws/2 is no mutation: it gives the same windows)
        original = window_ops._batch_window_order.__wrapped__
        monkeypatch.setattr(window_ops, '_batch_window_order',
                            lambda batch, h, w, ws, rolled, device: original(batch, h, w, ws, False, device))
    elif mutation == 'batchnorm_without_batch_statistics':  # the running statistics normalise in training
        monkeypatch.setattr(elan_fast, 'linear_batchnorm', lambda x, weight, bias, bn: fast_ops.linear(
            x, *elan_fast.fold_batchnorm(SimpleNamespace(weight=weight, bias=bias), bn)))
    else:  # sharing GMSAs attend with their own values as queries
        original_attention = window_ops.window_attention
        monkeypatch.setattr(window_ops, 'window_attention',
                            lambda v, q=None, shared=None: original_attention(v, q=v if q is None else q))
    diffs = compare(net, x.double(), gt.double())
    # a wrong formula, not rounding: ten times beyond even float32's bound (which is 1e9 times float64's)
    bounds = elan_bounds(net, padded_pixels(net, x))
    assert any(diffs[name] > 10 * bounds[name] for name in diffs), (diffs, bounds)


def test_batchnorm_statistics_and_adam_steps_match():
    """Four Adam steps (lr 2e-4, loss on [0, 255]) from identical weights on identical batches.

    The biases of the 1x1 convs in front of BatchNorm have a true gradient of zero (the
    normalisation subtracts any constant): the fast path gives exactly zero, the reference
    rounding noise, which Adam would normalise into steps of lr each way. They are frozen here,
    so that everything else (weights and running statistics, which those biases enter) can be
    compared; their gradients are checked on their own. Tolerances: tests/helpers/rounding.py
    (running statistics: BatchNormMagnitudes; weights: AdamStepBounds, from the gradients' bound)."""
    torch.manual_seed(2)
    fast, ref = twin(ELAN(upscale=2, **SMALL_LIGHT))
    for net in (fast, ref):
        for name, p in net.named_parameters():
            p.requires_grad_(not name.endswith('project_inp.0.bias'))
    optimizers = [torch.optim.Adam([p for p in n.parameters() if p.requires_grad], lr=2e-4) for n in (fast, ref)]
    x = torch.zeros(4, 3, 16, 16)
    # one gradient element sums N pixels of K-term products (rounding.elan_terms)
    steps = AdamStepBounds(optimizers[1], delta=elan_bounds(ref, padded_pixels(ref, x))['param_grad'])
    magnitudes = BatchNormMagnitudes(ref)
    gen = torch.Generator().manual_seed(3)
    for step in range(4):
        x = torch.rand(4, 3, 16, 16, generator=gen)
        gt = F.interpolate(x, scale_factor=2, mode='bicubic', align_corners=False)
        for net, opt in zip((fast, ref), optimizers):
            opt.zero_grad()
            F.l1_loss(net(x), gt).mul(255).backward()
            opt.step()
        steps.after_step()
    bounds = magnitudes.bounds()
    bn_f = {n: b for n, b in fast.named_buffers() if 'running' in n or 'num_batches' in n}
    bn_r = dict(ref.named_buffers())
    assert len(bn_f) == 3 * 4 and sorted(bounds) == sorted(n for n in bn_f if 'running' in n)
    for name, b in bn_f.items():
        if 'num_batches' in name:
            assert torch.equal(bn_r[name], b), name
        else:
            excess = ((b - bn_r[name]).abs().double() / bounds[name]).max().item()
            assert excess < 1, (name, excess)
    assert int(bn_f['body.0.modules_gmsa.gmsa_0.project_inp.1.num_batches_tracked']) == 4
    start = ELAN(upscale=2, **SMALL_LIGHT)
    moved = max((p - q).abs().max().item() for p, q in zip(ref.parameters(), start.parameters()))
    assert moved > 1e-4  # the steps changed the weights
    for (name, p_f), p_r in zip(fast.named_parameters(), ref.parameters()):
        if p_r.requires_grad:
            assert ((p_f - p_r).abs() <= steps.bound[p_r]).all(), name
        else:
            assert torch.equal(p_f, p_r), name
    for net in (fast, ref):
        net.requires_grad_(True)
    x, gt = photo_pair(2, 16, 16)
    biases = {name: [] for name, _ in ref.named_parameters() if name.endswith('project_inp.0.bias')}
    hooks = [ref.get_submodule(name[:-len('.bias')]).register_full_backward_hook(
        lambda m, grad_in, grad_out, name=name: biases[name].append(grad_out[0].abs().sum((0, 2, 3))))
        for name in biases]
    (_, _, grads_f), (_, _, grads_r) = forward_backward(fast, x, gt), forward_backward(ref, x, gt)
    for hook in hooks:
        hook.remove()
    for name, (abs_sum,) in biases.items():  # a sum over N pixels of the gradient reaching y = W x + b
        assert not grads_f[name].any(), name
        assert (grads_r[name].abs() <= sum_bound(abs_sum, padded_pixels(ref, x))).all(), name


def test_cuda_route_keeps_convolutions_and_batchnorm(monkeypatch):
    """On CUDA the fast path's 1x1 convolutions and project_inp's BatchNorm stay the reference's own
    operations (cuDNN's precision rules, TF32 by default, instead of cuBLAS's). That route, forced on the
    CPU: no hand-written product runs, and outputs, gradients, running statistics and the inference path
    still equal the reference arithmetic."""
    monkeypatch.setattr(fast_ops, 'as_convolution', lambda x: True)
    for product in (fast_ops._Linear, fast_ops._BatchNormLinear):
        monkeypatch.setattr(product, 'apply', lambda *args: pytest.fail('a matrix product ran'))
    torch.manual_seed(3)
    net = ELAN(upscale=3, **SMALL_LIGHT)
    x, gt = photo_pair(3, 13, 18)
    check_float32_against_float64(net, x, gt)
    fast, ref = twin(net.float())
    magnitudes = BatchNormMagnitudes(ref)
    forward_backward(fast, x, gt), forward_backward(ref, x, gt)
    bounds = magnitudes.bounds()  # channels_last vs NCHW convolutions: rounding apart
    assert len(bounds) == 8
    for name, buffer in ref.named_buffers():
        if name in bounds:
            assert ((fast.get_buffer(name) - buffer).abs() <= bounds[name]).all(), name
        else:
            assert torch.equal(fast.get_buffer(name), buffer), name
    with torch.no_grad():
        fast.eval().fast_inference, ref.eval().fast_inference = True, False
        inference = pair_bound(elan_bounds(ref, padded_pixels(ref, x))['output'])  # eval: K terms
        assert relative(fast(x), ref(x)) < inference


def test_sync_batchnorm_runs_as_itself(monkeypatch):
    """A project_inp BatchNorm converted to ``nn.SyncBatchNorm`` (statistics gathered across processes) is not
    folded into the matrix product, whose statistics would be this process's alone: the module itself runs."""
    monkeypatch.setattr(fast_ops._BatchNormLinear, 'apply', lambda *args: pytest.fail('SyncBatchNorm was folded'))
    torch.manual_seed(4)
    net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(ELAN(upscale=2, **SMALL_LIGHT))
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in net.modules())
    x, gt = photo_pair(2, 16, 16)
    check_float32_against_float64(net, x, gt)  # one process: SyncBatchNorm computes what BatchNorm2d does


def test_option_and_dispatch(monkeypatch):
    calls = []
    original = elan_fast.forward_padded
    monkeypatch.setattr(elan_fast, 'forward_padded', lambda net, x: calls.append(1) or original(net, x))
    x = torch.rand(1, 3, 8, 8)
    net = ELAN(upscale=2, c_elan=15, m_elan=2, window_sizes=[2, 4, 8])
    net(x).sum().backward()  # train mode with autograd: the fast path by default
    net.eval()
    net(x).sum().backward()  # eval mode with autograd: BatchNorm folded, gradients flow through it
    assert calls == [1, 1] and net.head[0].weight.grad is not None
    slow = ELAN(upscale=2, c_elan=15, m_elan=2, window_sizes=[2, 4, 8], fast_training=False)
    slow(x).sum().backward()
    assert calls == [1, 1]
    with torch.no_grad():
        slow.eval()(x)  # inference keeps its own switch
    assert calls == [1, 1, 1]
    assert 'fast' not in ' '.join(slow.state_dict())
    auto = ELAN(upscale=2, c_elan=15, m_elan=2, window_sizes=[2, 4, 8])
    assert auto.fast_training is None and auto.uses_fast_path(x)  # default: on for CPU tensors
    assert not auto.uses_fast_path(SimpleNamespace(is_cuda=True))  # not for CUDA: measured slower so far
    auto.fused_attention = True  # ... unless its fused attention kernels are asked for
    assert auto.uses_fast_path(SimpleNamespace(is_cuda=True))


def test_option_file_switch_builds_the_reference_arithmetic():
    from basicsr.archs import build_network
    net = build_network({'type': 'ELAN', 'upscale': 2, 'c_elan': 15, 'm_elan': 2, 'window_sizes': [2, 4, 8],
                         'fast_training': False})
    assert net.fast_training is False and not net.uses_fast_path(torch.zeros(1, 3, 8, 8))


def test_shift_backward_is_the_adjoint_shift():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 12, 5, 7, generator=gen, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    kernel = elan_arch.archs.elan_blocks.shift_kernel(12).double()
    x.requires_grad_()
    y = fast_ops.Shift.apply(x, kernel)
    g = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    (y * g).sum().backward()
    expected, = torch.autograd.grad((F.conv2d(x, kernel, padding=1, groups=12) * g).sum(), x)
    assert torch.equal(x.grad, expected) and y.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize('device_type', ['cpu'])
def test_window_gather_and_scatter_are_inverse_permutations(device_type):
    x = torch.randn(2 * 8 * 12, 9, dtype=torch.float64, requires_grad=True)
    orders = [window_ops.window_order(2, 8, 12, 4, rolled, torch.device(device_type)) for rolled in (False, True, True)]
    groups = window_ops.pixels_to_windows(x, orders, [3, 4, 2])
    assert [g.shape[-1] for g in groups] == [3, 4, 2]
    back = window_ops.windows_to_pixels(list(groups), orders)
    assert torch.equal(back, x)
    assert torch.autograd.gradcheck(lambda t: window_ops.windows_to_pixels(
        list(window_ops.pixels_to_windows(t, orders, [3, 4, 2])), orders) * 2, (x,))


def _float64(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).requires_grad_()


@pytest.mark.parametrize('kind', ['plain', 'relu', 'residual'])
def test_linear_backward_is_the_gradient(kind):
    x = _float64(2, 5, 3, 4, seed=1).detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    weight, bias, residual = _float64(6, 5, 1, 1, seed=2), _float64(6, seed=3), _float64(2, 3, 4, 6, seed=4)

    def f(x, weight, bias, residual):
        return fast_ops.linear(x, weight, bias, relu=kind == 'relu',
                               residual=residual.permute(0, 3, 1, 2) if kind == 'residual' else None)
    y = f(x, weight, bias, residual)
    expected = F.conv2d(x, weight, bias)
    if kind == 'relu':
        expected = expected.relu()
    elif kind == 'residual':
        expected = expected + residual.permute(0, 3, 1, 2)
    assert torch.allclose(y, expected) and y.is_contiguous(memory_format=torch.channels_last)
    assert torch.autograd.gradcheck(f, (x, weight, bias, residual))


def test_batchnorm_linear_backward_is_the_gradient():
    x = _float64(40, 5, seed=5)
    weight, bias = _float64(6, 5, seed=6), _float64(6, seed=7)
    gamma, beta = _float64(6, seed=8), _float64(6, seed=9)
    out, mean, var = fast_ops._BatchNormLinear.apply(x, weight, bias, gamma, beta, 1e-5)
    y = x @ weight.t() + bias
    expected = F.batch_norm(y, None, None, gamma, beta, training=True, eps=1e-5)
    assert torch.allclose(out, expected) and torch.allclose(mean, y.mean(0))
    assert torch.allclose(var, y.var(0, unbiased=False))
    assert torch.autograd.gradcheck(lambda *t: fast_ops._BatchNormLinear.apply(*t, 1e-5)[0],
                                    (x, weight, bias, gamma, beta))


@pytest.mark.parametrize('sharing', [0, 1, 2])
def test_attention_backward_is_the_gradient(sharing):
    """Gradients of softmax(q q^T) v and of the sharing GMSAs' maps @ v_i reach q through one backward."""
    q, v = _float64(3, 8, 4, seed=10), _float64(3, 8, 5, seed=11)
    shared_values = [_float64(3, 8, 5, seed=12 + i) for i in range(sharing)]

    def f(q, v, *values):
        y, state = window_ops.window_attention(v, q=q)
        return (y,) + tuple(window_ops.window_attention(vi, shared=state)[0] for vi in values)
    outputs = f(q, v, *shared_values)
    maps = torch.softmax(q @ q.transpose(1, 2), dim=-1)
    assert all(torch.allclose(o, maps @ vi) for o, vi in zip(outputs, [v] + shared_values))
    assert torch.autograd.gradcheck(f, (q, v, *shared_values))

    def maps_only(q, *values):
        state = window_ops.window_attention(v.detach(), q=q)[1]
        return tuple(window_ops.window_attention(vi, shared=state)[0] for vi in values)

    if sharing:  # the computing GMSA's own output unused: the maps' gradient alone
        assert torch.autograd.gradcheck(maps_only, (q, *shared_values))


def test_cpu_autocast_keeps_its_precision_choices():
    """Under autocast the fast path runs plain operations (which autocast casts), not the float32 kernels."""
    torch.manual_seed(4)
    fast, ref = twin(ELAN(upscale=2, **SMALL_LIGHT))
    x, gt = photo_pair(2, 16, 16)
    outputs = []
    for net in (fast, ref):
        with torch.autocast('cpu', dtype=torch.bfloat16):
            out = net(x)
        F.l1_loss(out.float(), gt).backward()
        outputs.append(out.float())
    # autocast rounds each product's inputs to bfloat16 (8 significant bits) and sums in float32: every layer
    # with a product adds a relative error of about eps_bf16, a random walk over the L = 6 m_elan + 2 such
    # layers of the forward (2 L for a gradient, which passes them back); two runs: twice that
    layers = 6 * SMALL_LIGHT['m_elan'] + 2
    assert outputs[0].dtype == torch.float32
    assert relative(outputs[0], outputs[1]) < pair_bound(relative_bound(layers, EPS_BF16))
    grads = [dict(n.named_parameters())['head.0.weight'].grad for n in (fast, ref)]
    assert relative(grads[0], grads[1]) < pair_bound(relative_bound(2 * layers, EPS_BF16))


def test_training_path_compiles_without_graph_breaks():
    net = ELAN(upscale=2, c_elan=15, m_elan=4, window_sizes=[2, 4, 8], fast_training=True).train()
    explanation = torch._dynamo.explain(lambda x: net(x).sum())(torch.rand(2, 3, 16, 16))
    assert (explanation.graph_count, explanation.graph_break_count) == (1, 0), explanation.break_reasons


@pytest.mark.parametrize('fast_training, traced', [(None, 'reference'), (True, 'fast'), (False, 'reference')])
def test_compiled_training_traces_the_reference_unless_forced(monkeypatch, fast_training, traced):
    """Under torch.compile the default (None) traces the module tree, which the compiler fuses better
    than the fast path's formulas; fast_training=True still forces the fast path. Eagerly, None is fast on the CPU."""
    net = ELAN(upscale=2, c_elan=15, m_elan=4, window_sizes=[2, 4, 8], fast_training=fast_training).train()
    calls = []
    original = elan_fast.forward_padded
    monkeypatch.setattr(elan_fast, 'forward_padded', lambda *a: calls.append('fast') or original(*a))
    x = torch.rand(2, 3, 16, 16)
    expected = net(x)
    assert calls == ([] if fast_training is False else ['fast'])
    calls.clear()
    torch._dynamo.reset()
    got = torch.compile(net, backend='eager', fullgraph=True)(x)
    assert calls == ([] if traced == 'reference' else ['fast'])
    assert relative(got, expected) < pair_bound(elan_bounds(net, padded_pixels(net, x))['output'])
