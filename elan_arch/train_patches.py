"""Targeted runtime fixes of basicsr 1.4.2's train/test pipeline, applied by the ``basicsr`` command.

:func:`apply` replaces a few basicsr functions in memory (nothing on disk; plain
``import elan_arch`` applies none of them). Each replacement keeps basicsr's
behaviour wherever basicsr works and only changes the case it gets wrong
(``basicsr.`` omitted below):

- ``utils.dist_util._init_dist_pytorch``: basicsr calls
  ``torch.cuda.set_device(rank % device_count())`` (ZeroDivisionError without a GPU;
  the global rank ignores torchrun's ``LOCAL_RANK``). Replaced by :func:`init_dist_pytorch`:
  ``LOCAL_RANK`` with CUDA, the gloo backend on CPU without it.
- ``utils.dist_util._init_dist_slurm``: the same ``set_device`` trap. Replaced by
  :func:`init_dist_slurm`: basicsr's environment (:func:`slurm_environment`), then as above.
- ``models.base_model.BaseModel.model_to_device``: DDP always gets
  ``device_ids=[cuda.current_device()]``, which fails on CPU. CPU DDP gets no ``device_ids``.
- ``models.base_model.BaseModel.save_network`` / ``save_training_state``: written in place,
  so an interrupted write leaves a truncated ``.pth``/``.state`` that ``--auto_resume`` then
  picks. Now written in a hidden temporary folder and renamed into place.
- ``train.load_resume_state``: maps the state to ``cuda.current_device()``, which fails without
  CUDA. Replaced by :func:`load_resume_state`: the current CUDA device or the CPU, and a clear
  error when the state or its networks are missing.
- ``train.create_train_val_dataloader``, ``train.build_model``, ``data.worker_init_fn``:
  wrapped, results unchanged, so that SIGINT/SIGTERM save a resumable state
  (:mod:`elan_arch.interrupt`).
"""
from __future__ import annotations

import functools
import os
import subprocess
import tempfile
from os import path as osp
from typing import Any, Callable, Dict, Optional

import torch
import torch.distributed as dist

from .errors import ElanError

_ORIGINALS: Dict[str, Callable] = {}
TORCHRUN_HINT = ('start it with torchrun, e.g. `torchrun --nproc_per_node=2 -m elan_arch.cli.basicsr_cmd train '
                 '-opt FILE --launcher pytorch`')


def init_dist_pytorch(backend: str = 'nccl', **kwargs: Any) -> None:
    """Replacement of ``basicsr.utils.dist_util._init_dist_pytorch`` (see the module docstring).

    With CUDA: ``torch.cuda.set_device(LOCAL_RANK)`` (basicsr's ``RANK % device_count()`` where
    ``LOCAL_RANK`` is unset) and ``backend``. Without CUDA: the gloo backend on CPU.
    """
    missing = [var for var in ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT') if var not in os.environ]
    if missing:
        raise ElanError(f'--launcher pytorch: environment variable(s) {", ".join(missing)} not set, so this '
                        f'process was not started by a distributed launcher; {TORCHRUN_HINT}')
    if torch.cuda.is_available():
        default_local = int(os.environ['RANK']) % torch.cuda.device_count()
        torch.cuda.set_device(int(os.environ.get('LOCAL_RANK', default_local)))
    elif backend != 'gloo':
        print(f'No CUDA device: distributed training on CPU with the gloo backend instead of {backend}.', flush=True)
        backend = 'gloo'
    dist.init_process_group(backend=backend, **kwargs)


def slurm_environment(environ: Dict[str, str], port: Optional[int] = None) -> Dict[str, str]:
    """The torch.distributed variables basicsr's slurm launcher derives from Slurm's.

    MASTER_ADDR is the first host of ``SLURM_NODELIST`` (via ``scontrol show hostname``), MASTER_PORT
    is ``port``, else the existing MASTER_PORT, else 29500; LOCAL_RANK is ``SLURM_LOCALID`` (basicsr:
    ``SLURM_PROCID % device_count()``, which needs a GPU).
    """
    for var in ('SLURM_PROCID', 'SLURM_NTASKS', 'SLURM_NODELIST'):
        if var not in environ:
            raise ElanError(f'--launcher slurm: environment variable {var} is not set; start the job with srun')
    host = subprocess.getoutput(f'scontrol show hostname {environ["SLURM_NODELIST"]} | head -n1').strip()
    if not host or ' ' in host:
        raise ElanError(f'--launcher slurm: `scontrol show hostname {environ["SLURM_NODELIST"]}` gave {host!r}; '
                        'run the job through Slurm (srun) on a node where scontrol works')
    proc_id = int(environ['SLURM_PROCID'])
    local_rank = environ.get('SLURM_LOCALID')
    if local_rank is None:
        local_rank = str(proc_id % max(torch.cuda.device_count(), 1))
    return {
        'MASTER_ADDR': host,
        'MASTER_PORT': str(port) if port is not None else environ.get('MASTER_PORT', '29500'),
        'WORLD_SIZE': environ['SLURM_NTASKS'],
        'RANK': str(proc_id),
        'LOCAL_RANK': local_rank,
    }


def init_dist_slurm(backend: str = 'nccl', port: Optional[int] = None) -> None:
    """Replacement of ``basicsr.utils.dist_util._init_dist_slurm``: :func:`slurm_environment`, then
    :func:`init_dist_pytorch` (so a CPU-only Slurm job falls back to gloo)."""
    os.environ.update(slurm_environment(dict(os.environ), port))
    init_dist_pytorch(backend)


def model_to_device(self: Any, net: torch.nn.Module) -> torch.nn.Module:
    """Replacement of ``BaseModel.model_to_device``: basicsr's on CUDA or without ``dist``; on CPU
    under ``dist``, ``DistributedDataParallel`` without ``device_ids``."""
    if not self.opt['dist'] or self.device.type == 'cuda':
        return _ORIGINALS['model_to_device'](self, net)
    return torch.nn.parallel.DistributedDataParallel(
        net.to(self.device), find_unused_parameters=self.opt.get('find_unused_parameters', False))


def _saved_atomically(method: Callable, path_key: str) -> Callable:
    """Wrap a basicsr save method so its files appear under ``opt['path'][path_key]`` only when complete.

    The method writes into a hidden temporary folder inside the destination (basicsr's ``scandir``
    skips hidden entries, so ``--auto_resume`` never sees it); each file is then renamed into place.
    Rank 0 only, as basicsr's ``@master_only`` methods.
    """

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> None:
        if self.opt.get('rank', 0) != 0:
            return
        final = self.opt['path'][path_key]
        os.makedirs(final, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix='.saving-', dir=final) as tmp:
            self.opt['path'][path_key] = tmp
            try:
                method(self, *args, **kwargs)
            finally:
                self.opt['path'][path_key] = final
            for name in os.listdir(tmp):
                os.replace(osp.join(tmp, name), osp.join(final, name))

    return wrapper


def _resume_location() -> torch.device:
    return torch.device('cuda', torch.cuda.current_device()) if torch.cuda.is_available() else torch.device('cpu')


def load_resume_state(opt: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """Replacement of ``basicsr.train.load_resume_state`` (same file choice, CPU-safe ``map_location``).

    ``--auto_resume`` takes the highest ``experiments/<name>/training_states/<iter>.state``;
    otherwise ``path.resume_state``. The networks of that iteration must exist
    (``models/net_<name>_<iter>.pth``, set by basicsr's ``check_resume``).
    """
    from basicsr.utils import check_resume, scandir

    state_path = None
    if opt['auto_resume']:
        folder = osp.join('experiments', opt['name'], 'training_states')
        if osp.isdir(folder):
            iters = [int(name[:-len('.state')]) for name in scandir(folder, suffix='.state')
                     if name[:-len('.state')].isdigit()]
            if iters:
                state_path = osp.join(folder, f'{max(iters)}.state')
                opt['path']['resume_state'] = state_path
    elif opt['path'].get('resume_state'):
        state_path = opt['path']['resume_state']
    if state_path is None:
        return None
    if not osp.isfile(state_path):
        raise ElanError(f'path.resume_state: {state_path} does not exist; fix the path or use --auto_resume')
    state = torch.load(state_path, map_location=_resume_location())
    check_resume(opt, state['iter'])
    for key, value in opt['path'].items():
        if key.startswith('pretrain_network_') and value and not osp.isfile(value):
            raise ElanError(f'resuming from {state_path} needs {value} ({key}), which does not exist; '
                            'resume from an iteration whose models were saved')
    return state


def apply() -> None:
    """Install the replacements (idempotent). Called by the ``basicsr`` command before any pipeline runs."""
    if _ORIGINALS:
        return
    import basicsr.data as data
    import basicsr.train as train
    import basicsr.utils.dist_util as dist_util
    from basicsr.models.base_model import BaseModel

    from . import interrupt

    _ORIGINALS.update(model_to_device=BaseModel.model_to_device)
    dist_util._init_dist_pytorch = init_dist_pytorch
    dist_util._init_dist_slurm = init_dist_slurm
    BaseModel.model_to_device = model_to_device
    BaseModel.save_network = _saved_atomically(BaseModel.save_network, 'models')
    BaseModel.save_training_state = _saved_atomically(BaseModel.save_training_state, 'training_states')
    train.load_resume_state = load_resume_state
    train.create_train_val_dataloader = interrupt.remember_sampler(train.create_train_val_dataloader)
    train.build_model = interrupt.stop_with_state(train.build_model)
    data.worker_init_fn = interrupt.signals_to_main_process(data.worker_init_fn)
