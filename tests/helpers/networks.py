"""Small ELAN configurations and random weights for the tests, and checkpoint files as others write them."""
from __future__ import annotations

import os
from collections import OrderedDict

import numpy as np
import torch

SMALL = dict(c_elan=15, m_elan=4, n_share=1, r_expand=2, window_sizes=[2, 4, 8])


def randomize(net: torch.nn.Module, seed: int = 0, weight_std: float = 0.3) -> torch.nn.Module:
    """Random weights and BatchNorm statistics, so that no term can hide behind a zero or a one.

    The default ``weight_std`` suits the small test networks; deep ones need less to stay finite.
    """
    gen = torch.Generator().manual_seed(seed)
    for name, p in net.named_parameters():
        p.data = torch.randn(p.shape, generator=gen) * (weight_std if name.endswith('weight') else 0.1)
    for name, b in net.named_buffers():
        if name.endswith('running_mean'):
            b.copy_(torch.randn(b.shape, generator=gen) * 0.1)
        elif name.endswith('running_var'):
            b.copy_(torch.rand(b.shape, generator=gen) + 0.5)
    return net


TINY = dict(c_elan=15, m_elan=4, n_share=1, r_expand=2)  # traiNNer-redux's default windows 4, 8, 16


def save_authors_checkpoint(net: torch.nn.Module, path, epoch: int = 1000) -> None:
    """Write what the authors' train.py writes: DataParallel keys plus optimizer/scheduler/stats."""
    opt = torch.optim.Adam(net.parameters(), lr=2e-4)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[250, 400, 450, 475, 500], gamma=0.5)
    state = OrderedDict(('module.' + k, v) for k, v in net.state_dict().items())
    stat = {'epochs': epoch, 'losses': [np.float64(3.2), 2.9], 'Set5': {'psnrs': [np.float64(32.1)],
                                                                         'best_psnr': {'value': 32.1, 'epoch': 1}}}
    torch.save({'epoch': epoch, 'model_state_dict': state, 'optimizer_state_dict': opt.state_dict(),
                'scheduler_state_dict': sched.state_dict(), 'stat_dict': stat}, path)


def no_temp_files(folder) -> bool:
    return not [n for n in os.listdir(folder) if n.endswith('.tmp')]
