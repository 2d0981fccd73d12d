"""``elan test``: alias of ``basicsr test`` (same options)."""
from __future__ import annotations

import argparse

from elan_arch.cli.train_cmd import register_phase


def register(subparsers: argparse._SubParsersAction) -> None:
    register_phase(subparsers, 'test')
