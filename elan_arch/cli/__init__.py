"""The ``elan`` command: one subcommand per module ``elan_arch/cli/<name>_cmd.py``.

Each module defines ``register(subparsers)``, which adds its parser and sets
``func`` (called with the parsed arguments, returns an exit code). Modules keep
heavy imports inside ``func`` so ``elan --help`` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

from elan_arch.utils.errors import ElanError

SUBCOMMANDS = ('convert', 'prepare', 'train', 'test', 'upscale', 'export', 'bench', 'compare')


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='elan', description='ELAN super-resolution for BasicSR.')
    sub = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')
    for name in SUBCOMMANDS:
        importlib.import_module(f'{__name__}.{name}_cmd').register(sub)
    return parser


def run_command(prog: str, args: argparse.Namespace) -> int:
    """Call ``args.func(args)``; :class:`ElanError` prints ``<prog> <command>: error: ...`` and gives 2,
    Ctrl-C gives 130. Shared by the ``elan`` and ``basicsr`` commands. Runs inside
    :func:`~elan_arch.utils.console.sturdy_console`: a closed or broken stdout/stderr (``| tee`` ended by the
    same Ctrl-C, a full disk) loses what is printed, never the run."""
    from elan_arch.utils.console import sturdy_console

    with sturdy_console():
        try:
            return int(args.func(args) or 0)
        except ElanError as err:
            print(f'{prog} {args.command}: error: {err}', file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(f'{prog} {args.command}: interrupted', file=sys.stderr)
            return 130


#: The subcommands that compute with PyTorch's CPU threads, whose OpenMP wait policy follows the CPU's load.
COMPUTING = ('train', 'test', 'upscale', 'bench', 'compare')


def main(argv: Optional[List[str]] = None) -> int:
    from elan_arch.utils.cpu_tuning import choose_wait_policy, tune_process

    tune_process()
    args = build_parser().parse_args(argv)
    if argv is None and args.command in COMPUTING:  # the command line, not a call from Python
        choose_wait_policy(f'elan {args.command}')
    return run_command('elan', args)


if __name__ == '__main__':
    sys.exit(main())
