"""The paper's ablations as ELAN options (``lfe``, ``attention``, ``shift_windows``, window sizes, sharing):
each builds and trains, has the parameters its module structure implies, computes what it claims (``sa``
against a plain window attention written here, ``conv1x1`` against ``shift`` with the shift made the
identity), never takes a fast path that assumes the defaults, and invalid configurations are refused."""
from __future__ import annotations

import copy
import math
import re

import pytest
import torch
import torch.nn.functional as F

import elan_arch  # noqa: F401  (before basicsr)
from basicsr.archs import build_network
from elan_arch import ELAN, ELAN_VARIANTS
from elan_arch.archs import elan_arch as arch_module
from elan_arch.archs import elan_fast
from elan_arch.archs.elan_arch import ELAN_ABLATIONS
from elan_arch.archs.elan_blocks import GMSA
from helpers.elan_spec import spec_forward
from helpers.equivalence import compare, photo_pair
from helpers.inference import calibrated, photo, to_tensor
from helpers.networks import randomize
from helpers.rounding import (EPS64, elan_bounds, elan_output_max_bound, float64_max_bound, padded_pixels, pair_bound,
                              within)

LIGHT = ELAN_VARIANTS['ELAN-light']
REFERENCE_ONLY = ['no_shift', 'conv3x3', 'sa']
FAST_PATH_KEPT = [name for name in ELAN_ABLATIONS if name not in REFERENCE_ONLY]


def ablation(name: str, **changes) -> ELAN:
    """ELAN-light with the ablation ``name`` (and ``changes``, e.g. a smaller depth)."""
    return ELAN(**{'upscale': 4, **LIGHT, **ELAN_ABLATIONS.get(name, {}), **changes})


def hand_count(scale: int, c: int = 60, m: int = 24, n_share: int = 1, r: int = 2, lfe: str = 'shift',
               attention: str = 'asa', colors: int = 3, **_) -> int:
    """Trainable parameters from the module structure (weights + biases of each layer).

    head: 3x3 conv colors -> c; tail: 3x3 conv c -> colors * scale^2. Each of the m LFEs: two 1x1 convs
    c -> c*r -> c (shift and conv1x1: the shift kernels are buffers), or two 3x3 convs (conv3x3).
    Each of the m / (1 + n_share) ELABs: one computing GMSA and n_share sharing ones.
    asa: computing = 1x1 conv c -> 2c + BatchNorm(2c) (weight, bias) + project_out c -> c;
         sharing = 1x1 conv c -> c + BatchNorm(c) + project_out.
    sa:  computing = LayerNorm(c) (weight, bias) + 1x1 conv c -> 3c + project_out;
         sharing = LayerNorm(c) + 1x1 conv c -> c + project_out.
    Window sizes and shifted windows have no parameters.
    """
    out = colors * scale * scale
    head, tail = 9 * colors * c + c, 9 * c * out + out
    taps = 9 if lfe == 'conv3x3' else 1
    one_lfe = (taps * c * c * r + c * r) + (taps * c * r * c + c)
    project_out = c * c + c
    if attention == 'asa':
        computing = (c * 2 * c + 2 * c) + 2 * (2 * c) + project_out
        sharing = (c * c + c) + 2 * c + project_out
    else:
        computing = 2 * c + (c * 3 * c + 3 * c) + project_out
        sharing = 2 * c + (c * c + c) + project_out
    blocks = m // (1 + n_share)
    return head + tail + m * one_lfe + blocks * (computing + n_share * sharing)


def trainable(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def test_the_hand_count_gives_the_reference_counts():
    # docs/elan_spec.md: ELAN-light 582,012 / 590,127 / 601,488, ELAN 8,312,448 at x4
    assert [hand_count(s) for s in (2, 3, 4)] == [582_012, 590_127, 601_488]
    assert hand_count(4, c=180, m=36, n_share=0) == 8_312_448


@pytest.mark.parametrize('scale', [2, 3, 4])
@pytest.mark.parametrize('name', ['default', *ELAN_ABLATIONS])
def test_parameter_count_is_the_hand_count(name, scale):
    options = {**LIGHT, **ELAN_ABLATIONS.get(name, {})}
    expected = hand_count(scale, c=options['c_elan'], m=options['m_elan'], n_share=options['n_share'],
                          r=options['r_expand'], lfe=options.get('lfe', 'shift'),
                          attention=options.get('attention', 'asa'))
    net = ablation(name, upscale=scale)
    assert trainable(net) == expected
    assert all(p.requires_grad for p in net.parameters())


def test_full_elan_with_standard_attention_counts():
    net = ELAN(upscale=4, **ELAN_VARIANTS['ELAN'], attention='sa')
    assert trainable(net) == hand_count(4, c=180, m=36, n_share=0, attention='sa')


def test_the_default_network_is_unchanged():
    """``ELAN()`` is the paper's ELAN-light, checked against the specification (tests/helpers/elan_spec.py, written
    from docs/elan_spec.md alone and reading the reference's key names): both paths in eval mode and the fast
    path in train mode (batch statistics) equal its float64 forward, so a change of a default (windows, shifts,
    sharing, the global residual, the mean shift) fails here, however the option defaults are spelled."""
    default = randomize(ELAN(upscale=4), seed=3, weight_std=0.05).double().eval()  # deep: small weights stay finite
    sd = default.state_dict()
    assert len(sd) == 12 * 2 * (6 + 9) + 8 and trainable(default) == 601_488
    assert not default.reference_only
    x = torch.rand(2, 3, 19, 21, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    assert default.uses_fast_path(x)
    trained = copy.deepcopy(default).train()  # batch statistics: the running ones left untouched in ``default``
    with torch.no_grad():
        fast = default(x)
        default.fast_inference = False
        reference = default(x)
        in_training = trained(x)
    expected = {False: spec_forward(sd, x, 4), True: spec_forward(sd, x, 4, training=True)}
    assert expected[False].std() > 0.05 and (expected[True] - expected[False]).abs().max() > 1e-3
    for training, out in ((False, fast), (False, reference), (True, in_training)):
        tolerance = elan_output_max_bound(default, expected[training], EPS64, padded_pixels(default, x) * training)
        assert out.shape == (2, 3, 76, 84) and (out - expected[training]).abs().max() < tolerance, training


@pytest.mark.parametrize('name', list(ELAN_ABLATIONS))
def test_every_variant_trains_one_step_with_finite_gradients(name):
    torch.manual_seed(0)
    net = ablation(name).train()
    x, gt = photo_pair(4, 16, 20)
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-4)
    before = copy.deepcopy(net.state_dict())
    loss = F.l1_loss(net(x), gt) * 255
    loss.backward()
    assert torch.isfinite(loss)
    grads = {n: p.grad for n, p in net.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values()), name
    assert sum(bool(g.abs().sum() > 0) for g in grads.values()) > 0.9 * len(grads)
    optimizer.step()
    changed = [k for k, v in net.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])]
    assert any(k.startswith('body.') for k in changed) and 'head.0.weight' in changed


def test_variant_keys_and_shapes():
    conv1x1 = ablation('no_shift').state_dict()
    assert not any(k.endswith('shift_conv.weight') for k in conv1x1)
    assert conv1x1['body.0.modules_lfe.lfe_0.conv0.shift_conv.conv1x1.weight'].shape == (120, 60, 1, 1)
    conv3x3 = ablation('conv3x3').state_dict()
    assert conv3x3['body.0.modules_lfe.lfe_0.conv0.weight'].shape == (120, 60, 3, 3)
    assert conv3x3['body.0.modules_lfe.lfe_0.conv1.weight'].shape == (60, 120, 3, 3)
    assert not any('shift_conv' in k for k in conv3x3)
    sa = ablation('sa').state_dict()
    assert sa['body.0.modules_gmsa.gmsa_0.project_inp.0.weight'].shape == (180, 60, 1, 1)  # Q, K, V
    assert sa['body.0.modules_gmsa.gmsa_1.project_inp.0.weight'].shape == (60, 60, 1, 1)  # sharing: V
    assert sa['body.0.modules_gmsa.gmsa_1.norm.weight'].shape == (60, )
    assert not any('project_inp.1' in k for k in sa)  # no BatchNorm
    no_shift_windows = ablation('no_shift_windows')
    assert not any(m.shift for m in no_shift_windows.modules() if isinstance(m, GMSA))
    assert any(m.shift for m in ablation('default').modules() if isinstance(m, GMSA))
    assert ablation('window16').pad_multiple == 16 and ablation('window8').pad_multiple == 8
    assert len(ablation('share3').body) == 6 and len(ablation('no_share').body) == 24


# ---------------------------------------------------------------------------- sa: plain window attention

def plain_window_sa(x: torch.Tensor, gmsa: GMSA, maps=None, symmetric: bool = False):
    """A standard window self-attention (LayerNorm, Q/K/V, softmax(Q K^T / sqrt(d)) V) written out window
    by window from the GMSA's weights: per group g of window ws, channels [g*3d, (g+1)*3d) of the projection
    are Q, K, V (d each); a sharing GMSA (``maps`` given) projects V only and uses the computing one's maps.
    ``symmetric``: ASA's formula instead, softmax(Q Q^T) V (to show that the difference shows)."""
    sd = {k: v.double() for k, v in gmsa.state_dict().items()}
    b, c, h, w = x.shape
    t = F.layer_norm(x.double().permute(0, 2, 3, 1), (c, ), sd['norm.weight'], sd['norm.bias'], eps=1e-5)
    proj = t @ sd['project_inp.0.weight'][:, :, 0, 0].T + sd['project_inp.0.bias']  # (B, H, W, 3c or c)
    groups = len(gmsa.window_sizes)
    d, width = c // groups, proj.shape[-1] // groups
    outs, all_maps = [], []
    for g, ws in enumerate(gmsa.window_sizes):
        p = proj[..., g * width:(g + 1) * width]
        if gmsa.shift:
            p = torch.roll(p, (-(ws // 2), -(ws // 2)), dims=(1, 2))
        out = torch.zeros(b, h, w, d, dtype=torch.float64)
        group_maps = []
        for n in range(b):
            for i in range(0, h, ws):
                for j in range(0, w, ws):
                    win = p[n, i:i + ws, j:j + ws].reshape(ws * ws, width)
                    if maps is None:
                        q, k, v = win[:, :d], win[:, d:2 * d], win[:, 2 * d:]
                        logits = q @ q.T if symmetric else q @ k.T / math.sqrt(d)
                        a = torch.exp(logits - logits.max(dim=1, keepdim=True).values)
                        a = a / a.sum(dim=1, keepdim=True)
                    else:
                        a, v = maps[g][len(group_maps)], win
                    group_maps.append(a)
                    out[n, i:i + ws, j:j + ws] = (a @ v).reshape(ws, ws, d)
        if gmsa.shift:
            out = torch.roll(out, (ws // 2, ws // 2), dims=(1, 2))
        outs.append(out)
        all_maps.append(group_maps)
    y = torch.cat(outs, dim=-1) @ sd['project_out.weight'][:, :, 0, 0].T + sd['project_out.bias']
    return y.permute(0, 3, 1, 2), all_maps


@pytest.mark.parametrize('shift', [False, True])
def test_sa_attention_equals_a_plain_window_attention(shift):
    torch.manual_seed(0)
    ws = [2, 4]
    computing = randomize(GMSA(8, ws, shift, calc_attn=True, attention='sa'), seed=1, weight_std=1.0).double()
    sharing = randomize(GMSA(8, ws, shift, calc_attn=False, attention='sa'), seed=2, weight_std=1.0).double()
    x = torch.randn(2, 8, 8, 12, dtype=torch.float64)
    y, maps = computing(x)
    expected, expected_maps = plain_window_sa(x, computing)
    assert expected.abs().max() > 0.5
    # layer-normed tokens (|t| < 3) through unit-std 8 x 8 projections (|w| < 3): |q|, |k|, |v| < 8 x 3 x 3;
    # a logit's error (below 4 x 72^2 / 2 in size) is the maps' relative error, times |v|; then 8 x 3 of project_out
    tolerance = float64_max_bound(4 * 72 ** 2 / 2 * 72 * 8 * 3)
    assert (y - expected).abs().max() < tolerance
    y2, _ = sharing(x, maps)
    expected2, _ = plain_window_sa(x, sharing, maps=expected_maps)
    assert (y2 - expected2).abs().max() < tolerance
    # the separate K and the 1/sqrt(d) scaling matter: ASA's formula on the same tokens differs
    assert (y - plain_window_sa(x, computing, symmetric=True)[0]).abs().max() > 1e-2


def test_sa_network_shares_the_computing_maps():
    torch.manual_seed(0)
    net = ablation('sa', upscale=2, m_elan=2).double().eval()
    block = net.body[0]
    x = torch.randn(1, 60, 16, 16, dtype=torch.float64)
    lfe0, lfe1 = block.modules_lfe.values()
    gmsa0, gmsa1 = block.modules_gmsa.values()
    with torch.no_grad():
        h = lfe0(x) + x
        y, maps = plain_window_sa(h, gmsa0)
        h = h + y
        h = lfe1(h) + h
        h = h + plain_window_sa(h, gmsa1, maps=maps)[0]
        assert (block(x) - h).abs().max() < float64_max_bound(h.abs().max().item())


# --------------------------------------------------------------- conv1x1: shift-conv without the shift

@pytest.mark.parametrize('training', [False, True])
def test_conv1x1_is_the_shift_network_with_the_shift_made_identity(training):
    x = torch.rand(2, 3, 13, 18, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    shift = randomize(ablation('default', upscale=2, m_elan=4), weight_std=0.05).double().train(training)
    with torch.no_grad():
        with_shift = shift(x)
        for name, buf in shift.named_buffers():
            if name.endswith('shift_conv.weight'):  # the kernel's off-centre taps 0, the centre 1
                buf.zero_()
                buf[:, 0, 1, 1] = 1
        identity = shift(x)
    no_shift = ablation('no_shift', upscale=2, m_elan=4).double().train(training)
    weights = {k: v for k, v in shift.state_dict().items() if not k.endswith('shift_conv.weight')}
    no_shift.load_state_dict(weights, strict=True)  # the same 1x1 weights, keys and all
    with torch.no_grad():
        out = no_shift(x)
    assert (out - identity).abs().max() < float64_max_bound(identity.abs().max().item())
    assert (out - with_shift).abs().max() > 1e-3 * identity.abs().max()  # the shift itself does matter


# ------------------------------------------------------------------------------------- fast path routing

@pytest.mark.parametrize('name', REFERENCE_ONLY)
def test_reference_only_variants_never_take_the_fast_path(name, monkeypatch):
    calls = []
    monkeypatch.setattr(arch_module.elan_fast, 'forward_padded', lambda net, x: calls.append(net) or x)
    net = ablation(name, upscale=2, m_elan=2)
    net.fast_training = True
    net.fused_attention = True
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert net.eval()(x).shape == (1, 3, 32, 32)
    with torch.inference_mode():
        net(x)
    net.train()(x).mean().backward()
    assert calls == [] and net.reference_only and not net.uses_fast_path(x)
    kept = ablation('window16', upscale=2, m_elan=2).eval()
    with torch.no_grad():
        kept(x)
    assert calls == [kept]


@pytest.mark.parametrize('name', FAST_PATH_KEPT)
def test_variants_that_keep_the_fast_path_equal_the_reference(name):
    torch.manual_seed(0)
    depth = {'share3': 8, 'no_share': 2}.get(name, 4)  # two ELABs: one unshifted, one shifted (unless turned off)
    net = ablation(name, upscale=2, m_elan=depth)
    assert not net.reference_only
    x, gt = photo_pair(2, 19, 21)
    training = compare(net.double(), x.double(), gt.double())
    bounds = elan_bounds(net, padded_pixels(net, x), EPS64)  # two float64 computations: twice the bound
    assert within(training, {key: pair_bound(b) for key, b in bounds.items()}), (training, bounds)
    lr = to_tensor(photo(21, 19))
    inference = calibrated(net.float(), lr)
    with torch.no_grad():
        fast = inference(lr)
        inference.fast_inference = False
        reference = inference(lr)
    assert reference.std() > 0.05 and (fast - reference).abs().max() < elan_output_max_bound(inference, reference)


def test_the_fast_path_itself_is_not_asked_to_do_reference_only_modules():
    # the fast path reads shift kernels and BatchNorms these variants do not have
    for name in REFERENCE_ONLY:
        net = ablation(name, upscale=2, m_elan=2).eval()
        x = torch.rand(1, 3, 16, 16)
        with pytest.raises((AttributeError, IndexError, TypeError)), torch.no_grad():
            elan_fast.forward_padded(net, x)
        with torch.no_grad():  # so the network must not dispatch to it: its own forward runs, as the module tree
            assert net.reference_only and not net.uses_fast_path(x) and net(x).shape == (1, 3, 32, 32)


# ---------------------------------------------------------------------------------------- refusals

@pytest.mark.parametrize('kwargs,message', [
    (dict(window_sizes=[4, 8, 12]), 'every window size must divide the largest (12)'),
    (dict(window_sizes=[4, 8, 12]), 'lcm=24'),
    (dict(window_sizes=[4, 8, 15]), 'window_sizes must be positive even integers'),
    (dict(window_sizes=[3]), 'window_sizes must be positive even integers (shifted windows roll by half'),
    (dict(window_sizes=[]), 'window_sizes must be positive even integers'),
    (dict(window_sizes=[4.5, 8]), 'window_sizes must be positive even integers'),
    (dict(window_sizes=['8']), 'window_sizes must be positive even integers'),
    (dict(window_sizes=[True, 8]), 'window_sizes must be positive even integers'),
    (dict(n_share=4), 'm_elan=24 must be a positive multiple of 1 + n_share=5 (the body is m_elan / (1 + n_share)'),
    (dict(n_share=-1), 'n_share must be an integer >= 0'),
    (dict(n_share=0.5), 'n_share must be an integer >= 0'),
    (dict(c_elan=50), 'c_elan=50 must be divisible by len(window_sizes)=3 (one channel group per window size'),
    (dict(c_elan=50, attention='sa'), 'c_elan=50 must be divisible by len(window_sizes)=3'),
    (dict(lfe='conv5x5'), "lfe='conv5x5' is not one of 'shift', 'conv1x1', 'conv3x3'"),
    (dict(lfe='Shift'), "lfe='Shift' is not one of 'shift', 'conv1x1', 'conv3x3'"),
    (dict(attention='mha'), "attention='mha' is not one of 'asa', 'sa'"),
    (dict(shift_windows='no'), "shift_windows must be true or false, got 'no'"),
])
def test_invalid_configurations_are_refused_with_the_rule(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        ELAN(**kwargs)
    with pytest.raises(ValueError, match=re.escape(message)):  # as BasicSR builds network_g
        build_network({'type': 'ELAN', **kwargs})


@pytest.mark.parametrize('kwargs,pad', [(dict(window_sizes=16), 16), (dict(window_sizes=[8]), 8),
                                        (dict(window_sizes=[8.0, 16]), 16), (dict(window_sizes=(6, 12, 12)), 12),
                                        (dict(n_share=2), 16), (dict(n_share=23), 16),
                                        (dict(c_elan=50, window_sizes=[16]), 16)])
def test_valid_configurations_are_accepted(kwargs, pad):
    net = ELAN(**kwargs)
    assert net.pad_multiple == pad and all(isinstance(ws, int) for ws in net.window_sizes)
