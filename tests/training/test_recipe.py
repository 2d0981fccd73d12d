"""The paper-recipe option files train as the authors did: L1 on [0, 255] and Adam, through BasicSR's builders."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Dict, List

import pytest
import torch
import yaml

import elan_arch  # noqa: F401  (before basicsr)
from elan_arch import ELAN
from helpers.inference import photo, to_tensor

OPTIONS = Path(__file__).resolve().parents[2] / 'options'
RECIPES = sorted(p.name for p in OPTIONS.glob('train_ELAN*_x[234].yml'))


def batches(n: int) -> List[tuple]:
    """``n`` (LR, HR) float64 pairs of real photo crops (x2)."""
    out = []
    for i in range(n):
        hr = to_tensor(photo(32, 32, top=50 + 40 * i, left=90 + 30 * i)).double()
        out.append((torch.nn.functional.avg_pool2d(hr, 2), hr))
    return out


def basicsr_steps(net: ELAN, train_opt: dict, data: List[tuple]) -> Dict[str, torch.Tensor]:
    """Steps as ``SRModel`` takes them: ``build_loss(pixel_opt)`` and ``get_optimizer(optim_g)``."""
    from basicsr.losses import build_loss
    from basicsr.models.base_model import BaseModel

    net = copy.deepcopy(net)
    pixel_opt, optim_opt = copy.deepcopy(train_opt['pixel_opt']), copy.deepcopy(train_opt['optim_g'])
    criterion = build_loss(pixel_opt)
    optimizer = BaseModel.get_optimizer(None, optim_opt.pop('type'), list(net.parameters()), **optim_opt)
    for lq, gt in data:
        optimizer.zero_grad()
        criterion(net(lq), gt).backward()
        optimizer.step()
    return {n: p.detach().clone() for n, p in net.named_parameters()}


def reference_steps(net: ELAN, data: List[tuple], lr: float = 2e-4, betas=(0.9, 0.999),
                    eps: float = 1e-8) -> Dict[str, torch.Tensor]:
    """The authors' recipe written out: their network sees [0, 255] images (ours scales inside, so its
    output times 255 is theirs), L1 of the means on that scale, Adam by its formula."""
    net = copy.deepcopy(net)
    params = dict(net.named_parameters())
    m = {n: torch.zeros_like(p) for n, p in params.items()}
    v = {n: torch.zeros_like(p) for n, p in params.items()}
    for t, (lq, gt) in enumerate(data, start=1):
        net.zero_grad()
        ((net(lq) * 255 - gt * 255).abs().mean()).backward()
        with torch.no_grad():
            for n, p in params.items():
                m[n] = betas[0] * m[n] + (1 - betas[0]) * p.grad
                v[n] = betas[1] * v[n] + (1 - betas[1]) * p.grad ** 2
                m_hat, v_hat = m[n] / (1 - betas[0] ** t), v[n] / (1 - betas[1] ** t)
                p -= lr * m_hat / (v_hat.sqrt() + eps)
    return {n: p.detach().clone() for n, p in params.items()}


def updates(start: ELAN, end: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {n: end[n] - p.detach() for n, p in start.named_parameters()}


@pytest.mark.parametrize('option_file', RECIPES)
def test_recipe_loss_is_the_references(option_file):
    with open(OPTIONS / option_file) as handle:
        train_opt = yaml.safe_load(handle)['train']
    assert train_opt['pixel_opt'] == {'type': 'L1Loss', 'loss_weight': 255.0, 'reduction': 'mean'}
    assert train_opt['optim_g'] == {'type': 'Adam', 'lr': 2e-4, 'weight_decay': 0, 'betas': [0.9, 0.999]}


def test_option_file_steps_equal_the_reference_recipe():
    with open(OPTIONS / 'train_ELAN_light_x4.yml') as handle:
        train_opt = yaml.safe_load(handle)['train']
    torch.manual_seed(0)
    net = ELAN(upscale=2, m_elan=2).double()  # ELAN-light's blocks, 2 of 24 for speed; BatchNorm in train mode
    data = batches(3)
    ours = updates(net, basicsr_steps(net, train_opt, data))
    theirs = updates(net, reference_steps(net, data))
    for name, update in theirs.items():  # steps of ~1e-4; atol covers the zero-gradient biases before BatchNorm
        assert torch.allclose(ours[name], update, rtol=1e-9, atol=1e-12), name
    assert min(u.abs().max() for n, u in theirs.items() if not n.endswith('project_inp.0.bias')) > 1e-5
    # loss_weight 1 (L1 on [0, 1]): the same gradients up to the factor 255, yet not the same steps
    weight_one_opt = dict(train_opt, pixel_opt=dict(train_opt['pixel_opt'], loss_weight=1.0))
    weight_one = updates(net, basicsr_steps(net, weight_one_opt, data))
    relative = {n: ((weight_one[n] - u).norm() / u.norm()).item() for n, u in theirs.items() if u.norm() > 0}
    assert max(relative.values()) > 0.05, max(relative.values())
