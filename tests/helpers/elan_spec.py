"""A slow, loop-based ELAN written from the text of docs/elan_spec.md, for the equivalence tests.

The mean-shift constants are read from the state_dict (their values are
asserted separately). It shares no code with ``elan_arch``: shifts are done by explicit slicing, window
attention by looping over windows and computing each softmax(q . q) row by hand,
BatchNorm by its formula. It reads weights from a state_dict with the authors'
key names, so it also checks that the package's key tree is the reference's.
All arithmetic is float64.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

def spec_shift(x: Tensor) -> Tensor:
    """Group 0 reads (y, x+1), 1 reads (y, x-1), 2 reads (y+1, x), 3 reads (y-1, x), 4 identity; zero fill."""
    c = x.shape[1]
    g = c // 5
    out = torch.zeros_like(x)
    out[:, 0 * g:1 * g, :, :-1] = x[:, 0 * g:1 * g, :, 1:]
    out[:, 1 * g:2 * g, :, 1:] = x[:, 1 * g:2 * g, :, :-1]
    out[:, 2 * g:3 * g, :-1, :] = x[:, 2 * g:3 * g, 1:, :]
    out[:, 3 * g:4 * g, 1:, :] = x[:, 3 * g:4 * g, :-1, :]
    out[:, 4 * g:] = x[:, 4 * g:]
    return out


def conv1x1(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    return torch.einsum('oc,bchw->bohw', w[:, :, 0, 0], x) + b.view(1, -1, 1, 1)


def batch_norm(x: Tensor, sd: Dict[str, Tensor], prefix: str, training: bool) -> Tensor:
    if training:
        mean, var = x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3), unbiased=False)
    else:
        mean, var = sd[prefix + 'running_mean'], sd[prefix + 'running_var']
    scale = sd[prefix + 'weight'] / torch.sqrt(var + 1e-5)
    return (x - mean.view(1, -1, 1, 1)) * scale.view(1, -1, 1, 1) + sd[prefix + 'bias'].view(1, -1, 1, 1)


def window_attention(x: Tensor, ws: int, shift: bool, atns: Optional[List[Tensor]]) -> tuple:
    """x: (B, 2c or c, H, W). Returns the output (B, c, H, W) and the per-window attention matrices."""
    if shift:
        x = torch.roll(x, shifts=(-ws // 2, -ws // 2), dims=(2, 3))
    b, _, h, w = x.shape
    compute = atns is None
    c = x.shape[1] // 2 if compute else x.shape[1]
    out = torch.zeros(b, c, h, w, dtype=x.dtype)
    new_atns = []
    idx = 0
    for n in range(b):
        for wy in range(h // ws):
            for wx in range(w // ws):
                win = x[n, :, wy * ws:(wy + 1) * ws, wx * ws:(wx + 1) * ws].reshape(x.shape[1], ws * ws)
                if compute:
                    q, v = win[:c], win[c:]
                    logits = q.T @ q  # (ws*ws, ws*ws): token i . token j, no scaling
                    atn = torch.exp(logits - logits.max(dim=1, keepdim=True).values)
                    atn = atn / atn.sum(dim=1, keepdim=True)
                else:
                    atn, v = atns[idx], win
                new_atns.append(atn)
                idx += 1
                y = (atn @ v.T).T  # (c, ws*ws)
                out[n, :, wy * ws:(wy + 1) * ws, wx * ws:(wx + 1) * ws] = y.reshape(c, ws, ws)
    if shift:
        out = torch.roll(out, shifts=(ws // 2, ws // 2), dims=(2, 3))
    return out, new_atns


def spec_forward(sd: Dict[str, Tensor], x: Tensor, scale: int, window_sizes: Sequence[int] = (4, 8, 16),
                 training: bool = False, img_range: float = 255.) -> Tensor:
    """ELAN forward per docs/elan_spec.md, on a state_dict with the reference's key names. x in [0, 1].

    Without ``sub_mean``/``add_mean`` keys (traiNNer-redux's ``norm: false``) there is no mean shift.
    """
    sd = {k: v.double() for k, v in sd.items()}
    x = x.double()
    h, w = x.shape[-2:]
    m = math.lcm(*window_sizes)
    x = F.pad(x, (0, (m - w % m) % m, 0, (m - h % m) % m), mode='reflect') * img_range
    if 'sub_mean.weight' in sd:
        x = conv1x1(x, sd['sub_mean.weight'], sd['sub_mean.bias'])  # the fixed mean-shift 1x1 conv
    x = F.conv2d(x, sd['head.0.weight'], sd['head.0.bias'], padding=1)
    feat = x
    n_blocks = 1 + max(int(k.split('.')[1]) for k in sd if k.startswith('body.'))
    for i in range(n_blocks):
        p = f'body.{i}.'
        pairs = sorted({k.split('.')[3] for k in sd if k.startswith(p + 'modules_lfe.')})
        atns = None
        for pair in range(len(pairs)):
            lp = f'{p}modules_lfe.lfe_{pair}.'
            y = conv1x1(spec_shift(x), sd[lp + 'conv0.shift_conv.conv1x1.weight'],
                        sd[lp + 'conv0.shift_conv.conv1x1.bias'])
            y = torch.relu(y)
            y = conv1x1(spec_shift(y), sd[lp + 'conv1.shift_conv.conv1x1.weight'],
                        sd[lp + 'conv1.shift_conv.conv1x1.bias'])
            x = x + y
            gp = f'{p}modules_gmsa.gmsa_{pair}.'
            y = conv1x1(x, sd[gp + 'project_inp.0.weight'], sd[gp + 'project_inp.0.bias'])
            y = batch_norm(y, sd, gp + 'project_inp.1.', training)
            chunks = torch.chunk(y, len(window_sizes), dim=1)
            outs, new_atns = [], []
            for g, ws in enumerate(window_sizes):
                o, a = window_attention(chunks[g], ws, shift=(i % 2 == 1), atns=None if atns is None else atns[g])
                outs.append(o)
                new_atns.append(a)
            atns = new_atns
            x = x + conv1x1(torch.cat(outs, dim=1), sd[gp + 'project_out.weight'], sd[gp + 'project_out.bias'])
    x = x + feat
    x = F.pixel_shuffle(F.conv2d(x, sd['tail.0.weight'], sd['tail.0.bias'], padding=1), scale)
    if 'add_mean.weight' in sd:
        x = conv1x1(x, sd['add_mean.weight'], sd['add_mean.bias'])
    x = x / img_range
    return x[..., :h * scale, :w * scale]
