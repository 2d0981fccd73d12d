"""Stop a BasicSR training run on SIGINT/SIGTERM with a resumable state saved.

basicsr 1.4.2 dies on Ctrl-C or a scheduler's SIGTERM, losing everything since the last
``save_checkpoint_freq``. Inside :func:`stop_on_signals`, once the training loop runs (the
handlers are installed at the first iteration: a process still starting up, e.g. waiting for a
peer, stops at once as usual), the first SIGINT/SIGTERM only sets a flag; after the iteration
under way, the model saves ``net_*_<iter>.pth`` and ``<iter>.state`` (as at a checkpoint) and
:class:`TrainingInterrupted` ends the run, which ``basicsr train --auto_resume`` continues. A
second SIGINT stops at once (``KeyboardInterrupt``). Under ``dist`` all ranks agree on the flag
every iteration (one all-reduce of one number), so they stop at the same iteration, and wait
for rank 0 to finish saving before they exit.

The hooks wrap two functions of ``basicsr.train`` (see :mod:`elan_arch.training.basicsr_fixes`):
``create_train_val_dataloader`` (to know the epoch, which the resume state records) and
``build_model`` (to check the flag after each ``optimize_parameters``), and
``basicsr.data.worker_init_fn`` (DataLoader workers leave the signals to the main process).
"""
from __future__ import annotations

import contextlib
import functools
import multiprocessing
import signal
from os import path as osp
from typing import Any, Callable, Dict, Iterator, Optional

import torch
import torch.distributed as dist

_RUN: Dict[str, Any] = {'stop': None, 'sampler': None, 'started': False}


class TrainingInterrupted(Exception):
    """Training stopped by a signal after saving the state of iteration ``iteration``."""

    def __init__(self, signum: int, iteration: int, state_path: str) -> None:
        super().__init__(f'stopped by {signal.Signals(signum).name} after iteration {iteration}; '
                         f'saved {state_path}')
        self.signum, self.iteration, self.state_path = signum, iteration, state_path


class StopFlag:
    """Set by the first SIGINT/SIGTERM once :meth:`arm` installed it; a second SIGINT raises ``KeyboardInterrupt``."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self.previous: Dict[int, Any] = {}

    def arm(self) -> None:
        """Install the handlers (idempotent); :func:`stop_on_signals` restores the previous ones."""
        if not self.previous:
            self.previous = {sig: signal.signal(sig, self.handle) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        try:  # never raise from here: a broken console must not stop the save (elan_arch.utils.console)
            print(f'\n{signal.Signals(signum).name} received: saving a resumable state after this iteration '
                  '(Ctrl-C again to stop at once).', flush=True)
        except (OSError, ValueError):
            pass

    def agreed(self, device: torch.device) -> Optional[int]:
        """The signal number if this rank (or, under ``dist``, any rank) was signalled, else None."""
        if not (dist.is_available() and dist.is_initialized()):
            return self.signum
        flag = torch.tensor([self.signum or 0], dtype=torch.int64, device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item()) or None


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopFlag]:
    """Handle SIGINT/SIGTERM from the first iteration of the training run inside; restore the handlers after."""
    flag = StopFlag()
    _RUN.update(stop=flag, sampler=None, started=False)
    try:
        yield flag
    except BaseException:
        _stop_data_workers()
        raise
    finally:
        _RUN.update(stop=None, sampler=None)
        for sig, handler in flag.previous.items():
            signal.signal(sig, handler)


def training_started() -> bool:
    """Whether the last training run under :func:`stop_on_signals` reached its first iteration."""
    return bool(_RUN['started'])


def _stop_data_workers() -> None:
    """Kill this process's multiprocessing children (DataLoader workers) and reap them.

    After an exception the loader iterator lives on in the traceback, so its workers would only be
    stopped at interpreter exit by ``terminate()`` (SIGTERM), which they ignore here. PyTorch's
    SIGCHLD handler, which would report the killed workers as a failure, is off meanwhile.
    """
    previous = signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    try:
        for child in multiprocessing.active_children():
            child.kill()
            child.join(timeout=10)
    finally:
        signal.signal(signal.SIGCHLD, previous)


def signals_to_main_process(worker_init_fn: Callable) -> Callable:
    """Wrap ``basicsr.data.worker_init_fn``: DataLoader workers ignore SIGINT and SIGTERM.

    Ctrl-C reaches the whole process group and Slurm signals every process of a job, so without
    this the workers die first and the main process fails with "DataLoader worker ... is killed
    by signal" before it can save. The loader still stops them normally at the end of training;
    after an exception :func:`stop_on_signals` kills them.
    """

    @functools.wraps(worker_init_fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        return worker_init_fn(*args, **kwargs)

    return wrapper


def remember_sampler(create_loaders: Callable) -> Callable:
    """Wrap ``basicsr.train.create_train_val_dataloader`` to keep the train sampler (it knows the epoch)."""

    @functools.wraps(create_loaders)
    def wrapper(opt: Dict[str, Any], logger: Any) -> Any:
        result = create_loaders(opt, logger)
        _RUN['sampler'] = result[1]
        return result

    return wrapper


def stop_with_state(build_model: Callable) -> Callable:
    """Wrap ``basicsr.train.build_model``: the model checks the stop flag after each optimisation step."""

    @functools.wraps(build_model)
    def wrapper(opt: Dict[str, Any]) -> Any:
        model = build_model(opt)
        flag = _RUN['stop']
        if opt.get('is_train') and flag is not None:
            model.optimize_parameters = _checked(model, model.optimize_parameters, flag)
        return model

    return wrapper


def _checked(model: Any, optimize: Callable, flag: StopFlag) -> Callable:

    @functools.wraps(optimize)
    def optimize_parameters(current_iter: int, *args: Any, **kwargs: Any) -> Any:
        if not _RUN['started']:
            _RUN['started'] = True
            flag.arm()
        result = optimize(current_iter, *args, **kwargs)
        signum = flag.agreed(model.device)
        if signum is not None:
            sampler = _RUN['sampler']
            from basicsr.utils import get_root_logger

            model.save(sampler.epoch if sampler is not None else 0, current_iter)
            if dist.is_available() and dist.is_initialized():
                dist.barrier()  # no rank exits (and makes torchrun stop the others) before rank 0 has saved
            stop = TrainingInterrupted(signum, current_iter,
                                       osp.join(model.opt['path']['training_states'], f'{current_iter}.state'))
            get_root_logger().warning(f'Training {stop}')
            raise stop
        return result

    return optimize_parameters
