"""The ``elan`` command: one subcommand per module ``elan_arch/cli/<name>_cmd.py``.

Each module defines ``register(subparsers)``, which adds its parser and sets ``func`` (called with the
parsed arguments, returns an exit code). The command imports only the module of the subcommand it runs
(the overview, ``elan --help``, is built from :data:`SUBCOMMANDS` alone), and the modules keep heavy imports
inside ``func``; torch is loaded after the OpenMP wait policy is chosen (:func:`main`), so no command has to
restart itself to apply it.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Dict, List, Optional, Sequence

from elan_arch.utils import cpu_tuning
from elan_arch.utils.errors import ElanError

#: The CPU's load counters as the command started (the OpenMP wait policy's sample begins here).
STARTED = cpu_tuning.load_sample()

#: Subcommand -> the line ``elan --help`` shows for it (the module ``<name>_cmd`` defines the rest).
SUBCOMMANDS: Dict[str, str] = {
    'convert': "convert an authors', traiNNer-redux or other ELAN checkpoint to BasicSR's format or safetensors",
    'prepare': 'prepare DIV2K / benchmark sets / the demo data for BasicSR',
    'train': 'train a network from a BasicSR option file (alias of `basicsr train`)',
    'test': 'test a network from a BasicSR option file (alias of `basicsr test`)',
    'upscale': 'super-resolve images with an ELAN checkpoint',
    'export': 'export an ELAN checkpoint to ONNX (checked with onnxruntime)',
    'bench': 'speed/size of ELAN vs SwinIR-light and EDSR (markdown table + PNG chart)',
    'compare': 'compare models on test sets: a web page with a viewer, paper-style figures, a CSV',
}
#: The subcommands that compute with PyTorch's CPU threads, whose OpenMP wait policy follows the CPU's load.
COMPUTING = ('train', 'test', 'upscale', 'bench', 'compare')


def _chosen(argv: Sequence[str]) -> Optional[str]:
    """The subcommand ``argv`` names (its first word that is not an option), None for none or an unknown one."""
    first = next((arg for arg in argv if not arg.startswith('-')), None)
    return first if first in SUBCOMMANDS else None


def build_parser(argv: Optional[Sequence[str]] = None) -> argparse.ArgumentParser:
    """The ``elan`` parser with the full parser of the subcommand ``argv`` names (``None``: all of them);
    the others are listed from :data:`SUBCOMMANDS` without importing their modules."""
    parser = argparse.ArgumentParser(prog='elan', description='ELAN super-resolution for BasicSR.')
    sub = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')
    chosen = None if argv is None else _chosen(argv)
    for name, summary in SUBCOMMANDS.items():
        if argv is None or name == chosen:
            importlib.import_module(f'{__name__}.{name}_cmd').register(sub)
        else:
            sub.add_parser(name, help=summary, add_help=False)
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


def choose_wait_policy(prog: str, command: Optional[str], argv: Sequence[str]) -> None:
    """For a command line that computes (``command`` in :data:`COMPUTING`, not asking for ``--help``): the
    OpenMP wait policy from the CPU's load, before anything (a parser included) loads torch and with it
    libgomp, which reads the policy once; so nothing restarts."""
    if command in COMPUTING and not {'-h', '--help'} & set(argv):
        cpu_tuning.choose_wait_policy(f'{prog} {command}', since=STARTED)


def main(argv: Optional[List[str]] = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    if argv is None:  # the command line, not a call from Python
        choose_wait_policy('elan', _chosen(words), words)
    args = build_parser(words).parse_args(argv)
    cpu_tuning.tune_process()
    return run_command('elan', args)


if __name__ == '__main__':
    sys.exit(main())
