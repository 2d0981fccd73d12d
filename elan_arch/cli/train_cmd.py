"""``elan train``: alias of ``basicsr train`` (same options); :mod:`.test_cmd` does ``elan test``."""
from __future__ import annotations

import argparse

from elan_arch.cli.basicsr_cmd import add_pipeline_arguments, run_phase

def register_phase(subparsers: argparse._SubParsersAction, phase: str) -> None:
    """Add the ``elan <phase>`` parser ('train' or 'test') with ``basicsr <phase>``'s options."""
    parser = subparsers.add_parser(
        phase,
        description=f'Same as `basicsr {phase}`: load the BasicSR plugins, then run basicsr\'s {phase} '
        'pipeline on the option file with the current directory as the root.')
    add_pipeline_arguments(parser)
    parser.set_defaults(func=run_phase, phase=phase)


def register(subparsers: argparse._SubParsersAction) -> None:
    register_phase(subparsers, 'train')

