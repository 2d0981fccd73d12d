"""The ELAN arch against docs/elan_spec.md: registry, parameter counts, key names, arithmetic."""
from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F

import elan_arch  # noqa: F401  (registers ELAN, applies the basicsr compat shim)
from basicsr.archs import build_network
from basicsr.utils.registry import ARCH_REGISTRY
from elan_arch.archs.elan_arch import ELAN_VARIANTS
from elan_arch.archs.elan_blocks import GMSA, ShiftConv1x1, pad_to_multiple
from helpers.elan_spec import spec_forward, spec_shift, window_attention
from helpers.networks import SMALL, randomize
from helpers.rounding import (EPS32, EPS64, attention_max_bound, elan_output_max_bound, longest_product, padded_pixels,
                              pair_bound, relative_bound, sum_bound)

# Trainable parameters counted on the reference code (docs/elan_spec.md).
REFERENCE_PARAMS = {
    ('ELAN-light', 2): 582_012, ('ELAN-light', 3): 590_127, ('ELAN-light', 4): 601_488,
    ('ELAN', 2): 8_254_092, ('ELAN', 3): 8_278_407, ('ELAN', 4): 8_312_448,
}


@pytest.mark.parametrize('variant,scale', sorted(REFERENCE_PARAMS))
def test_trainable_parameter_counts_match_reference(variant, scale):
    net = ARCH_REGISTRY.get('ELAN')(upscale=scale, **ELAN_VARIANTS[variant])
    assert sum(p.numel() for p in net.parameters() if p.requires_grad) == REFERENCE_PARAMS[(variant, scale)]
    # the fixed shift kernels and mean shifts are buffers: nothing frozen among the parameters
    assert all(p.requires_grad for p in net.parameters())


def test_defaults_are_elan_light_and_build_network_works():
    net = build_network({'type': 'ELAN', 'upscale': 4})
    assert isinstance(net, ARCH_REGISTRY.get('ELAN'))
    assert sum(p.numel() for p in net.parameters()) == REFERENCE_PARAMS[('ELAN-light', 4)]
    assert len(net.body) == 12  # m_elan 24 // (1 + n_share 1)


def test_state_dict_keys_follow_the_reference_tree():
    sd = ARCH_REGISTRY.get('ELAN')(upscale=2, **ELAN_VARIANTS['ELAN-light']).state_dict()
    for key in ['sub_mean.weight', 'sub_mean.bias', 'add_mean.weight', 'add_mean.bias', 'head.0.weight',
                'head.0.bias', 'tail.0.weight', 'tail.0.bias',
                'body.11.modules_lfe.lfe_1.conv0.shift_conv.weight',
                'body.11.modules_lfe.lfe_1.conv1.shift_conv.conv1x1.weight',
                'body.11.modules_lfe.lfe_1.conv1.shift_conv.conv1x1.bias',
                'body.0.modules_gmsa.gmsa_0.project_inp.1.num_batches_tracked',
                'body.0.modules_gmsa.gmsa_1.project_inp.1.running_var',
                'body.0.modules_gmsa.gmsa_1.project_out.weight']:
        assert key in sd, key
    assert 'body.12.modules_lfe.lfe_0.conv0.shift_conv.weight' not in sd
    assert 'body.0.modules_gmsa.gmsa_2.project_out.weight' not in sd
    assert sd['body.0.modules_gmsa.gmsa_0.project_inp.0.weight'].shape == (120, 60, 1, 1)  # C -> 2C
    assert sd['body.0.modules_gmsa.gmsa_1.project_inp.0.weight'].shape == (60, 60, 1, 1)  # sharing: C -> C
    assert sd['body.0.modules_lfe.lfe_0.conv0.shift_conv.weight'].shape == (60, 1, 3, 3)
    assert sd['tail.0.weight'].shape == (12, 60, 3, 3)
    # one float32 multiplication each: within eps32 of each other
    assert torch.allclose(sd['sub_mean.bias'], -255 * torch.tensor([0.4488, 0.4371, 0.4040]), rtol=EPS32, atol=0)
    assert torch.equal(sd['sub_mean.weight'], torch.eye(3).view(3, 3, 1, 1))
    # 12 ELABs x 2 pairs x (LFE 2 x 3 keys + GMSA 2 + 5 + 2 keys) + head 2 + tail 2 + mean shifts 4
    assert len(sd) == 12 * 2 * (6 + 9) + 8


def test_shift_by_hand_on_a_small_tensor():
    # 7 channels -> g = 1: channels 0..3 move one way each, 4..6 stay
    x = torch.arange(7 * 3 * 4, dtype=torch.float32).view(1, 7, 3, 4)
    op = ShiftConv1x1(7, 7)
    op.conv1x1.weight.data = torch.eye(7).view(7, 7, 1, 1)
    op.conv1x1.bias.data.zero_()
    y = op(x)[0]
    assert y[0].tolist() == [[1, 2, 3, 0], [5, 6, 7, 0], [9, 10, 11, 0]]  # reads (y, x+1): moved left
    assert y[1].tolist() == [[0, 12, 13, 14], [0, 16, 17, 18], [0, 20, 21, 22]]  # reads (y, x-1)
    assert y[2].tolist() == [[28, 29, 30, 31], [32, 33, 34, 35], [0, 0, 0, 0]]  # reads (y+1, x): moved up
    assert y[3].tolist() == [[0, 0, 0, 0], [36, 37, 38, 39], [40, 41, 42, 43]]  # reads (y-1, x)
    assert torch.equal(y[4:], x[0, 4:])
    z = torch.randn(2, 12, 5, 6)
    # 9 depthwise taps and 12 channels summed, all but one term exactly zero: one term's rounding at most
    assert torch.allclose(op_identity(12)(z), spec_shift(z), rtol=pair_bound(relative_bound(9 + 12)), atol=0)


def op_identity(c: int) -> ShiftConv1x1:
    op = ShiftConv1x1(c, c)
    op.conv1x1.weight.data = torch.eye(c).view(c, c, 1, 1)
    op.conv1x1.bias.data.zero_()
    return op


def test_window_attention_by_hand_on_one_window():
    # one 2x2 window, q = v: tokens t0..t3; out_i = sum_j softmax_j(t_i . t_j) t_j
    tokens = torch.tensor([[1., 0.], [0., 1.], [1., 1.], [0., 0.]], dtype=torch.float64)  # (4 tokens, c=2)
    x = torch.cat([tokens.T, tokens.T]).reshape(1, 4, 2, 2)  # channels: q (2) then v (2)
    out, atns = window_attention(x, 2, shift=False, atns=None)
    logits = torch.tensor([[1., 0., 1., 0.], [0., 1., 1., 0.], [1., 1., 2., 0.], [0., 0., 0., 0.]], dtype=torch.float64)
    expected = torch.softmax(logits, dim=1) @ tokens
    tol = pair_bound(attention_max_bound(tokens, tokens, EPS64))  # float64, one window of 4 tokens
    assert torch.allclose(out[0].reshape(2, 4).T, expected, rtol=0, atol=tol)
    assert torch.allclose(atns[0][3], torch.full((4, ), 0.25, dtype=torch.float64), rtol=0, atol=tol)


@pytest.mark.parametrize('shift', [False, True])
def test_gmsa_matches_loop_over_windows(shift):
    torch.manual_seed(0)
    ws = [2, 4, 8]
    gmsa, share = GMSA(6, ws, shift, calc_attn=True).eval(), GMSA(6, ws, shift, calc_attn=False).eval()
    for m in (gmsa, share):
        for conv in (m.project_inp[0], m.project_out):
            conv.weight.data = torch.eye(6).repeat(conv.weight.shape[0] // 6, 1).view(-1, 6, 1, 1)
            conv.bias.data.zero_()
        m.project_inp[1].eps = 0.0
    x = torch.randn(2, 6, 8, 8)
    y, atns = gmsa(x)
    # identity projections: channels [2g, 2g+1] of group g are both q and v for window ws[g]
    groups = torch.cat([x, x], dim=1).chunk(3, dim=1)
    expected = [window_attention(g.double(), w, shift, None) for g, w in zip(groups, ws)]
    # float32 against float64: the identity projections' 6 terms, then attention in windows of up to 64 tokens
    q = x.double().permute(0, 2, 3, 1).reshape(1, -1, 6)
    tol = attention_max_bound(q, q) + sum_bound(x.abs().max().item(), 6)
    assert torch.allclose(y.double(), torch.cat([e[0] for e in expected], dim=1), rtol=0, atol=tol)
    y2, _ = share(x, atns)
    expected2 = [window_attention(c.double(), w, shift, e[1]) for c, w, e in zip(x.chunk(3, 1), ws, expected)]
    assert torch.allclose(y2.double(), torch.cat([e[0] for e in expected2], dim=1), rtol=0, atol=tol)


@pytest.mark.parametrize('training', [False, True])
@pytest.mark.parametrize('size', [(16, 16), (13, 10)])
def test_full_forward_matches_spec(training, size):
    net = randomize(ARCH_REGISTRY.get('ELAN')(upscale=3, **SMALL)).train(training)
    x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = spec_forward(net.state_dict(), x, 3, SMALL['window_sizes'], training=training)
        y = net(x)
        y64 = net.double()(x.double())
    assert y.shape == (2, 3, size[0] * 3, size[1] * 3)
    assert expected.abs().max() > 1.0  # random weights: a wrong term cannot hide in a tiny output
    # Random weights and statistics can make attention maps ill-conditioned (large logits), beyond the rounding
    # bound of image-like networks: the float32 result's own error measures the conditioning. Float64 rounds the
    # same sums 2^29 times finer, in kernels that may order them differently (ATen's loops against oneDNN's
    # blocks: typical errors up to sqrt(K) apart; two computations: twice that).
    pixels = padded_pixels(net, x) if training else 0  # train mode: BatchNorm's statistics sum every pixel
    float32_error = (y.double() - expected).abs().max().item()
    conditioned = 2 * math.sqrt(longest_product(SMALL['c_elan'], SMALL['window_sizes'])) * EPS64 / EPS32 * float32_error
    assert (y64 - expected).abs().max() < max(elan_output_max_bound(net, expected, EPS64, pixels), conditioned)


def test_pad_to_multiple_is_reflect_when_legal_and_handles_tiny_inputs():
    x = torch.randn(1, 3, 13, 10)
    assert torch.equal(pad_to_multiple(x, 16), F.pad(x, (0, 6, 0, 3), mode='reflect'))
    for h, w in [(1, 1), (8, 8), (3, 17), (1, 5)]:
        assert pad_to_multiple(torch.randn(1, 3, h, w), 16).shape[-2:] == (16, 32 if w > 16 else 16)
    net = ARCH_REGISTRY.get('ELAN')(upscale=2).eval()
    with torch.no_grad():
        assert net(torch.rand(1, 3, 8, 8)).shape == (1, 3, 16, 16)  # the reference crashes here
        assert net(torch.rand(1, 3, 1, 3)).shape == (1, 3, 2, 6)


@pytest.mark.parametrize('kwargs,message', [
    (dict(c_elan=61), 'c_elan=61 must be divisible'),
    (dict(m_elan=25), 'm_elan=25 must be a positive multiple of 1 + n_share=2'),
    (dict(upscale=0), 'upscale must be >= 1'),
    (dict(window_sizes=[4, 0, 16]), 'window_sizes must be positive'),
])
def test_bad_configuration_is_refused_clearly(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        ARCH_REGISTRY.get('ELAN')(**kwargs)


def test_gradients_reach_every_trainable_parameter():
    net = ARCH_REGISTRY.get('ELAN')(upscale=2, **SMALL)
    net(torch.rand(2, 3, 8, 8)).mean().backward()
    grads = {name: p.grad for name, p in net.named_parameters()}
    assert all(g is not None for g in grads.values())
    # the conv biases in front of a train-mode BatchNorm cancel in its output: exactly zero gradient
    in_front_of_bn = [name for name in grads if name.endswith('project_inp.0.bias')]
    assert in_front_of_bn and all(not grads[name].any() for name in in_front_of_bn)
    assert all(g.abs().sum() > 0 for name, g in grads.items() if name not in in_front_of_bn)
