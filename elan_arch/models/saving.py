"""Network checkpoints that say which network they hold.

basicsr 1.4.2's ``BaseModel.save_network`` writes ``{param_key: state_dict}`` only, and ELAN's tensors
cannot tell its window sizes or shifted windows, so every reader of such a file had to guess them.
:func:`save_network` writes the same file (name, entries, CPU tensors without ``module.``) plus, for an
ELAN, its record under ``'network_g'`` (:func:`elan_arch.deploy.checkpoint.network_record`): an entry
basicsr's ``load_network`` never reads (it takes ``load_net[param_key]``, ``params`` or ``params_ema``,
under either ``strict_load``), so the files stay BasicSR checkpoints. The ``basicsr`` command installs it
for every model (:mod:`elan_arch.training.basicsr_fixes`).
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Union

import torch
from torch import nn


def checkpoint_dict(self: Any, nets: List[nn.Module], param_keys: List[str], net_label: str) -> Dict[str, Any]:
    """What :func:`save_network` writes: each net's CPU state_dict under its key, and the record of the
    first ELAN among them (``net_g`` and ``net_g_ema`` are the same network) under ``network_<label>``
    (``network_g`` for ``net_g``)."""
    from elan_arch.archs.elan_arch import ELAN
    from elan_arch.deploy.checkpoint import network_record

    bare = [self.get_bare_model(net) for net in nets]
    save_dict: Dict[str, Any] = {key: {(k[len('module.'):] if k.startswith('module.') else k): v.cpu()
                                       for k, v in net.state_dict().items()} for net, key in zip(bare, param_keys)}
    elan = next((net for net in bare if isinstance(net, ELAN)), None)
    if elan is not None:
        save_dict['network_' + net_label.removeprefix('net_')] = network_record(elan)
    return save_dict


def save_network(self: Any, net: Union[nn.Module, List[nn.Module]], net_label: str, current_iter: Union[int, str],
                 param_key: Union[str, List[str]] = 'params') -> None:
    """``BaseModel.save_network`` (same arguments and file, ``models/<label>_<iter>.pth``, ``latest`` for
    ``current_iter == -1``) with the network's record; rank 0 only, as basicsr's ``@master_only``. A failed
    write raises (basicsr only warned and went on)."""
    if self.opt.get('rank', 0) != 0:
        return
    nets = net if isinstance(net, list) else [net]
    keys = param_key if isinstance(param_key, list) else [param_key]
    if len(nets) != len(keys):
        raise ValueError('save_network: the lengths of net and param_key should be the same')
    name = f'{net_label}_{"latest" if current_iter == -1 else current_iter}.pth'
    torch.save(checkpoint_dict(self, nets, keys, net_label), os.path.join(self.opt['path']['models'], name))
