"""torchrun entry of the distributed tests: ``basicsr train`` (as ``-m elan_arch.cli.basicsr_cmd``) that
also writes this rank's final ``net_g`` state_dict to ``<out>/rank<R>.pth``.

With ``ELAN_TEST_KILL=RANK:ITER`` in the environment, the worker of that rank kills itself with SIGKILL
after optimising iteration ITER, in the first attempt of the group only (``TORCHELASTIC_RESTART_COUNT``
0): a worker lost mid-run, at a point the test knows. ``RANK:ITER:raise`` raises a RuntimeError instead.

Usage: torchrun ... tests/helpers/dist_worker.py OUT train -opt FILE --launcher pytorch [...]
"""
import os
import signal
import sys

import torch

import elan_arch  # noqa: F401  (before basicsr)
import basicsr.train
from elan_arch.training import basicsr_fixes
from elan_arch.cli import basicsr_cmd


def _killed_at(model, rank: int, iteration: int, how: str):
    optimize = model.optimize_parameters

    def optimize_parameters(current_iter, *args, **kwargs):
        result = optimize(current_iter, *args, **kwargs)
        if current_iter == iteration and int(os.environ.get('RANK', '0')) == rank:
            if how == 'raise':
                raise RuntimeError(f'ELAN_TEST_KILL: rank {rank} fails after iteration {iteration}')
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    model.optimize_parameters = optimize_parameters
    return model


if __name__ == '__main__':
    out, argv = sys.argv[1], sys.argv[2:]
    basicsr_fixes.apply()  # idempotent; wrap build_model after the command's own wrappers
    models = []
    build = basicsr.train.build_model
    basicsr.train.build_model = lambda opt: models.append(build(opt)) or models[-1]
    kill = os.environ.get('ELAN_TEST_KILL')
    if kill and os.environ.get('TORCHELASTIC_RESTART_COUNT', '0') == '0':
        rank, iteration, *how = kill.split(':')
        basicsr.train.build_model = lambda opt: _killed_at(models.append(build(opt)) or models[-1], int(rank),
                                                           int(iteration), ''.join(how) or 'kill')
    code = basicsr_cmd.main(argv)
    if models:
        net = models[0].get_bare_model(models[0].net_g)
        torch.save(net.state_dict(), os.path.join(out, f"rank{os.environ.get('RANK', '0')}.pth"))
    sys.exit(code)
