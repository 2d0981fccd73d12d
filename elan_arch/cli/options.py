"""Command-line options that several ``elan`` subcommands share."""
from __future__ import annotations

import argparse
from typing import Any, Dict

#: ``--compile MODE``: ``torch.compile``'s modes. ``reduce-overhead`` also records CUDA graphs, which suit tiles
#: of one shape, whose time on a GPU is mostly kernel launches (docs/performance.md).
COMPILE_MODES = ('default', 'reduce-overhead', 'max-autotune', 'max-autotune-no-cudagraphs')


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


def add_network_options(parser: argparse.ArgumentParser, weights: str = 'the weights', opt_also: str = '') -> None:
    """Add the options that say which network a checkpoint holds where its file does not (read back by
    :func:`network_overrides`; the rules: :func:`elan_arch.deploy.checkpoint.network_config`), and
    ``--unsafe-load``: ``--opt FILE``, ``--window-sizes``, ``--shift-windows``/``--no-shift-windows``,
    ``--img-range``. ``weights`` names the checkpoint in the help texts; ``opt_also`` ends ``--opt``'s help
    where a command reads more of the option file (``elan bench --train``: its training set)."""
    group = parser.add_argument_group(
        'which network the checkpoint holds',
        f'Read from the record in {weights} (every checkpoint this package writes has one), else from the option '
        'file BasicSR copied beside its run (experiments/<name>/*.yml), else assumed and said so. These options '
        'say it instead.')
    group.add_argument('--opt', metavar='FILE',
                       help=f'a BasicSR option file whose network_g describes the weights{opt_also}')
    group.add_argument('--window-sizes', type=int, nargs='+', metavar='N',
                       help='attention window sizes (the weights cannot tell; reference: 4 8 16)')
    group.add_argument('--shift-windows', action=argparse.BooleanOptionalAction, default=None,
                       help='whether every second block shifts its windows (the weights cannot tell; reference: '
                       'shifted)')
    group.add_argument('--img-range', type=float, metavar='R',
                       help='the pixel range (inferred from the mean shift assuming the DIV2K mean; 1 for '
                       'traiNNer-redux\'s norm: true weights, which their files do not record)')
    group.add_argument('--unsafe-load', action='store_true',
                       help=f'unpickle arbitrary Python objects in {weights} (only for files you trust)')


def network_overrides(args: argparse.Namespace) -> Dict[str, Any]:
    """What :func:`add_network_options`'s options say, as the ``overrides`` of
    :func:`elan_arch.deploy.checkpoint.load_checkpoint` (ELAN options and ``opt``; only those given)."""
    given = {'opt': args.opt, 'window_sizes': args.window_sizes, 'shift_windows': args.shift_windows,
             'img_range': args.img_range}
    return {k: v for k, v in given.items() if v is not None}
