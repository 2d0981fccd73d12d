"""Command-line options that several ``elan`` subcommands share."""
from __future__ import annotations

import argparse

from elan_arch.inference.upscale import COMPILE_MODES


def add_device_options(parser: argparse.ArgumentParser, default_device: str, compile_help: str) -> None:
    """Add ``--device``, ``--half`` and ``--compile [MODE]`` (``--compile`` alone is mode ``default``).

    They are read back by :func:`~elan_arch.inference.upscale.select_device` and
    :func:`~elan_arch.inference.upscale.prepare_network` / :func:`~elan_arch.inference.upscale.compile_network`.
    """
    default = 'cuda if available' if default_device == 'auto' else default_device
    parser.add_argument('--device', default=default_device, help=f'cpu, cuda or cuda:N (default: {default})')
    parser.add_argument('--half', action='store_true', help='float16 (CUDA only)')
    parser.add_argument('--compile', nargs='?', const='default', choices=COMPILE_MODES, metavar='MODE',
                        help=f'{compile_help}; MODE is torch.compile\'s ({", ".join(COMPILE_MODES)}; alone: default): '
                        'reduce-overhead replays CUDA graphs, for tiles of one shape on a GPU')
