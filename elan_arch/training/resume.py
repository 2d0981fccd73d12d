"""Which state a training run resumes from, and what a resumed run takes from its options.

:func:`choose_resume_state` is what the ``basicsr`` command's replacement of
``basicsr.train.load_resume_state`` (:func:`elan_arch.training.basicsr_fixes.load_resume_state`) resumes from:

* ``--auto_resume`` takes the newest ``training_states/<iter>.state`` whose state *and* network
  files (``models/net_<name>_<iter>.pth``) all load. A damaged checkpoint (truncated by a full disk
  or a bad copy, or with a network file missing) is moved aside (its files renamed to
  ``*.damaged``, nothing is deleted) with a one-line warning naming it, and the next newer-to-older
  one is tried. Under ``dist`` rank 0 chooses and tells the other ranks.
* A restarted torchrun group (:func:`elastic.group_restarted`) resumes as if ``--auto_resume`` had
  been given, and says so.
* ``path.resume_state`` naming a missing or damaged file, or one whose networks are, is an
  :class:`ElanError` naming the file.
* States are read on the CPU (the optimizers move their state to their parameters' device); basicsr
  maps them to ``torch.cuda.current_device()``, which fails without CUDA.

:func:`schedule_from_options` wraps ``BaseModel.resume_training``: a resumed run keeps the
scheduler's progress (iteration, learning rates) from the state but its shape (periods, milestones,
restart weights, ``eta_min``, ``gamma``) from the options, so extending a finished run with a
larger ``train.total_iter`` (and periods or milestones to match) continues under the new schedule;
basicsr lets the saved shape override the options and its cosine scheduler then fails with a
TypeError past the old end.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from os import path as osp
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist

from elan_arch.training import elastic
from elan_arch.utils.errors import ElanError
from elan_arch.training.notes import note

DAMAGED_SUFFIX = '.damaged'
# Scheduler state entries that record progress; every other entry is the schedule's shape.
SCHEDULER_PROGRESS = frozenset({'last_epoch', '_step_count', '_last_lr', 'base_lrs', '_get_lr_called_within_step',
                                '_is_initial', 'verbose'})
_RESUMED: Dict[str, Optional[Tuple[int, int]]] = {'at': None}


@dataclass(frozen=True)
class SavedIteration:
    """The files of one saved iteration: ``<iter>.state`` and ``{pretrain_network_<name>: net_<name>_<iter>.pth}``."""

    iteration: int
    state: str
    networks: Dict[str, str]

    @property
    def files(self) -> List[str]:
        return [self.state, *self.networks.values()]


def saved_iteration(opt: Dict[str, Any], iteration: int, state: Optional[str] = None) -> SavedIteration:
    """The files that resuming at ``iteration`` reads (the networks as basicsr's ``check_resume`` names them)."""
    ignored = opt['path'].get('ignore_resume_networks') or []
    networks = {f'pretrain_{key}': osp.join(opt['path']['models'], f'net_{key[len("network_"):]}_{iteration}.pth')
                for key in opt if key.startswith('network_') and key not in ignored}
    state = state or osp.join(opt['path']['training_states'], f'{iteration}.state')
    return SavedIteration(iteration, state, networks)


def read(path: str) -> Tuple[Any, Optional[str]]:
    """``(torch.load(path) on the CPU, None)``, or ``(None, why)`` when the file is missing or does not load."""
    if not osp.isfile(path):
        return None, 'missing'
    try:
        return torch.load(path, map_location='cpu'), None
    except Exception as err:  # truncated zip, empty file, not a torch file: RuntimeError, EOFError, ...
        first = str(err).splitlines()[0] if str(err) else ''
        return None, f'does not load: {type(err).__name__}: {first}'


def read_state(path: str) -> Tuple[Optional[Dict[str, Any]], Optional[str]]:
    """A training state (a dict with ``iter`` and ``epoch``) from ``path``, or ``(None, why)``."""
    state, why = read(path)
    if why is None and not (isinstance(state, dict) and {'iter', 'epoch'} <= set(state)):
        return None, 'not a BasicSR training state'
    return state, why


def network_problems(ckpt: SavedIteration) -> List[str]:
    """``'<file>: <why>'`` for each network file of ``ckpt`` that is missing or does not load."""
    return [f'{path}: {why}' for path in ckpt.networks.values() for why in [read(path)[1]] if why]


def move_aside(ckpt: SavedIteration) -> List[str]:
    """Rename the existing files of ``ckpt`` to ``<file>.damaged`` (``.damaged.1``, ... if taken); the new names."""
    moved = []
    for path in ckpt.files:
        if not osp.exists(path):
            continue
        target, number = path + DAMAGED_SUFFIX, 0
        while osp.exists(target):
            number += 1
            target = f'{path}{DAMAGED_SUFFIX}.{number}'
        os.rename(path, target)
        moved.append(target)
    return moved


def _saved_iterations(folder: str) -> List[int]:
    if not osp.isdir(folder):
        return []
    return sorted((int(name[:-len('.state')]) for name in os.listdir(folder)
                   if name.endswith('.state') and name[:-len('.state')].isdigit()), reverse=True)


def newest_intact(opt: Dict[str, Any]) -> Optional[int]:
    """The newest iteration whose checkpoint loads; damaged newer ones are moved aside with a warning."""
    for iteration in _saved_iterations(opt['path']['training_states']):
        ckpt = saved_iteration(opt, iteration)
        why = read_state(ckpt.state)[1]
        found = [f'{ckpt.state}: {why}'] if why else network_problems(ckpt)
        if not found:
            return iteration
        moved = move_aside(ckpt)
        note(f'--auto_resume: checkpoint of iteration {iteration} is damaged ({"; ".join(found)}); moved aside '
             f'as {", ".join(osp.basename(p) for p in moved)}; trying the previous one')
    return None


def _auto_resume_iteration(opt: Dict[str, Any]) -> Optional[int]:
    """:func:`newest_intact` on rank 0 (the only rank that moves files), shared with every rank."""
    if not (dist.is_available() and dist.is_initialized()):
        return newest_intact(opt)
    choice = [newest_intact(opt) if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(choice, src=0)
    return choice[0]


def choose_resume_state(opt: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The state to resume from (or None), its checkpoint checked to load (see the module docstring)."""
    from basicsr.utils import check_resume

    if not opt['auto_resume'] and elastic.group_restarted():
        opt['auto_resume'] = True
        note('torchrun restarted the worker group: resuming from the newest intact checkpoint '
             '(--auto_resume implied)')
    if opt['auto_resume']:
        iteration = _auto_resume_iteration(opt)
        ckpt = None if iteration is None else saved_iteration(opt, iteration)
    elif opt['path'].get('resume_state'):
        path = opt['path']['resume_state']
        state, why = read_state(path)
        ckpt = saved_iteration(opt, state['iter'] if state else -1, path)
        found = [f'{path}: {why}'] if why else network_problems(ckpt)
        if found:
            raise ElanError(f'path.resume_state: cannot resume from {path} ({"; ".join(found)}); point it at an '
                            'intact state, or use --auto_resume, which takes the newest intact one')
    else:
        ckpt = None
    if ckpt is None:
        _RESUMED['at'] = None
        return None
    opt['path']['resume_state'] = ckpt.state
    state, why = read_state(ckpt.state)  # on the CPU: optimizers move their state to their parameters' device
    if why:  # rank 0 read it (it chose it): this rank sees another file system
        raise ElanError(f'resuming from {ckpt.state}: {why} on this node; every node needs the experiment '
                        'folder (a shared file system)')
    check_resume(opt, state['iter'])
    _RESUMED['at'] = (state['epoch'], state['iter'])
    return state


def resumed_at() -> Optional[Tuple[int, int]]:
    """``(epoch, iteration)`` of the state this run resumed from, None for a fresh run."""
    return _RESUMED['at']


def schedule_from_options(resume_training: Callable) -> Callable:
    """Wrap ``BaseModel.resume_training``: scheduler progress from the state, the schedule's shape from the options."""

    @functools.wraps(resume_training)
    def wrapper(self: Any, resume_state: Dict[str, Any]) -> Any:
        merged = []
        for number, (scheduler, saved) in enumerate(zip(self.schedulers, resume_state['schedulers'])):
            shape = {key: value for key, value in scheduler.state_dict().items() if key not in SCHEDULER_PROGRESS}
            changed = [f'{key} {saved[key]} -> {value}' for key, value in shape.items()
                       if key in saved and saved[key] != value]
            if changed:
                note(f'scheduler {number}: {", ".join(changed)} (from the options); continuing at iteration '
                     f'{resume_state["iter"]} of the new schedule')
            merged.append({**saved, **shape})
        return resume_training(self, {**resume_state, 'schedulers': merged + resume_state['schedulers'][len(merged):]})

    return wrapper
