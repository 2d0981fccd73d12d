"""torchrun entry of tests/test_distributed.py: ``basicsr train`` (as ``-m elan_arch.cli.basicsr_cmd``) that
also writes this rank's final ``net_g`` state_dict to ``<out>/rank<R>.pth``.

Usage: torchrun ... tests/dist_worker.py OUT train -opt FILE --launcher pytorch [...]
"""
import os
import sys

import torch

import elan_arch  # noqa: F401  (before basicsr)
import basicsr.train
from elan_arch import train_patches
from elan_arch.cli import basicsr_cmd

if __name__ == '__main__':
    out, argv = sys.argv[1], sys.argv[2:]
    train_patches.apply()  # idempotent; wrap build_model after the command's own wrappers
    models = []
    build = basicsr.train.build_model
    basicsr.train.build_model = lambda opt: models.append(build(opt)) or models[-1]
    code = basicsr_cmd.main(argv)
    net = models[0].get_bare_model(models[0].net_g)
    torch.save(net.state_dict(), os.path.join(out, f'rank{os.environ["RANK"]}.pth'))
    sys.exit(code)
