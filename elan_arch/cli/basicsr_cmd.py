"""The ``basicsr`` command: ``basicsr train -opt FILE ...`` / ``basicsr test -opt FILE``.

basicsr 1.4.2 installs no command, and ``python -m basicsr.train`` takes site-packages as
its root (experiments/, results/ and tb_logger/ land there). This command:

1. imports every module of the ``basicsr.plugins`` entry-point group (this package is one),
   so an option file can name archs, models and datasets of several plugins;
2. checks the option file (exists, is YAML, names registered types);
3. applies :mod:`elan_arch.training.basicsr_fixes` (CPU/gloo distributed, elastic restarts, resume past
   damaged checkpoints, exact resume, atomic checkpoints) and, for training,
   :mod:`elan_arch.training.interrupt` (SIGINT/SIGTERM save a state; the command that resumes is printed
   once, in the form that was running: basicsr, torchrun or srun) and :mod:`elan_arch.training.startup`
   (a start that fails leaves no folders behind, and the error goes into the log if one is left);
4. hands over to ``basicsr.train.train_pipeline`` / ``basicsr.test.test_pipeline`` with the
   current directory as the root, with basicsr's own argument parser seeing the same options.

Distributed: ``torchrun --nproc_per_node=N -m elan_arch.cli.basicsr_cmd train -opt FILE --launcher pytorch``.
``--local-rank`` (``torch.distributed.launch``) is accepted as basicsr's ``--local_rank``.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from importlib.metadata import entry_points
from typing import Any, Dict, List, Optional

from elan_arch.utils.errors import ElanError

PLUGIN_GROUP = 'basicsr.plugins'


def add_pipeline_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of basicsr's ``parse_options`` (shared by ``basicsr train|test`` and ``elan train|test``)."""
    parser.add_argument('-opt', '--opt', dest='opt', required=True, metavar='FILE', help='option YAML file')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm'], default='none',
                        help='job launcher: none (one process), pytorch (under torchrun), slurm (under srun)')
    parser.add_argument('--auto_resume', action='store_true',
                        help='continue from the latest experiments/<name>/training_states/<iter>.state')
    parser.add_argument('--debug', action='store_true', help="basicsr's debug mode (name prefixed with debug_)")
    parser.add_argument('--local_rank', '--local-rank', dest='local_rank', type=int, default=0,
                        help='set by torch.distributed.launch; ignored (torchrun sets LOCAL_RANK)')
    parser.add_argument('--force_yml', nargs='+', default=None, metavar='KEY=VALUE',
                        help='override existing options, e.g. train:total_iter=1000 '
                        'datasets:train:batch_size_per_gpu=8')


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='basicsr', description='Run BasicSR training or testing from an option file, with every installed '
        f'BasicSR plugin (entry-point group {PLUGIN_GROUP}) loaded; the current directory is the root of '
        'experiments/, results/ and tb_logger/.')
    sub = parser.add_subparsers(dest='command', required=True, metavar='PHASE')
    for phase in ('train', 'test'):
        phase_parser = sub.add_parser(phase, help=f'basicsr.{phase}.{phase}_pipeline')
        add_pipeline_arguments(phase_parser)
        phase_parser.set_defaults(func=run_phase, phase=phase)
    return parser


def load_plugins() -> List[str]:
    """Import every module registered under :data:`PLUGIN_GROUP`; return their names."""
    import elan_arch  # noqa: F401  (makes basicsr importable before any plugin imports it)

    names = []
    found = entry_points()
    group = found.select(group=PLUGIN_GROUP) if hasattr(found, 'select') else found.get(PLUGIN_GROUP, [])  # 3.9
    for entry in group:
        try:
            entry.load()
        except Exception as err:
            raise ElanError(f'BasicSR plugin {entry.name!r} ({entry.value}) failed to import: {err!r}; '
                            f'fix or uninstall the package that provides it') from err
        names.append(entry.name)
    return names


def pipeline_argv(args: argparse.Namespace) -> List[str]:
    """Turn parsed options back into the argv that basicsr's ``parse_options`` reads."""
    argv = ['-opt', args.opt, '--launcher', args.launcher, '--local_rank', str(args.local_rank)]
    argv += ['--auto_resume'] * args.auto_resume + ['--debug'] * args.debug
    if args.force_yml:
        argv += ['--force_yml', *args.force_yml]
    return argv


def _registered(kind: str, name: str) -> bool:
    from basicsr.utils import registry

    table = getattr(registry, f'{kind.upper()}_REGISTRY')
    return name in table or f'{name}_basicsr' in table  # Registry.get also tries the suffixed name


def check_option_file(path: str, plugins: List[str], overridden: List[str], phase: Optional[str] = None
                      ) -> Dict[str, Any]:
    """Load ``path`` and check that every type it names is registered, and that it has the datasets ``phase``
    ('train' or 'test') needs; :class:`ElanError` otherwise.

    ``overridden`` lists ``--force_yml`` keys (``a:b:c``), which are not checked here. (The values, the
    networks' options and the files they name are checked once the options are parsed:
    :mod:`elan_arch.training.startup`.)
    """
    import yaml

    if not os.path.isfile(path):
        raise ElanError(f'-opt {path}: no such file (option files of this package are in options/)')
    try:
        with open(path, encoding='utf-8') as handle:
            opt = yaml.safe_load(handle)
    except yaml.YAMLError as err:
        raise ElanError(f'-opt {path}: not valid YAML: {err}') from err
    if not isinstance(opt, dict) or 'name' not in opt:
        raise ElanError(f'-opt {path}: not a BasicSR option file (a YAML mapping with name, model_type, ...)')
    if 'model_type' not in opt:
        raise ElanError(f'-opt {path}: model_type is missing (e.g. model_type: ELANModel)')
    wanted = [('model', 'model_type', opt['model_type'])]
    wanted += [('arch', f'{key}:type', value.get('type')) for key, value in opt.items()
               if key.startswith('network_') and isinstance(value, dict)]
    wanted += [('dataset', f'datasets:{key}:type', value.get('type'))
               for key, value in (opt.get('datasets') or {}).items() if isinstance(value, dict)]
    for kind, key, name in wanted:
        if key not in overridden and name is not None and not _registered(kind, str(name)):
            raise ElanError(f'-opt {path}: {key} names {name!r}, which no loaded {kind} registry holds '
                            f'(basicsr and plugins {", ".join(plugins) or "none"}); check the spelling or install '
                            f'the plugin that provides it')
    datasets = opt.get('datasets')
    if (phase is not None and not isinstance(datasets, dict)) or (phase == 'test' and not datasets):
        what = 'a train set (datasets: train: ...)' if phase == 'train' else 'a test set (datasets: test_1: ...)'
        raise ElanError(f'-opt {path}: datasets is missing; basicsr {phase} needs {what}')
    if phase == 'train' and not isinstance(datasets.get('train'), dict):
        raise ElanError(f'-opt {path}: datasets:train is missing; basicsr train needs a train set '
                        f'(datasets has {", ".join(map(str, datasets)) or "nothing"})')
    return opt


def user_argv(args: argparse.Namespace) -> List[str]:
    """This command's options as the user would type them (no ``--local_rank``), for the resume hint."""
    argv = ['train', '-opt', args.opt] + ['--launcher', args.launcher] * (args.launcher != 'none')
    argv += ['--debug'] * args.debug + ['--auto_resume'] * args.auto_resume
    return argv + (['--force_yml', *args.force_yml] if args.force_yml else [])


def _train(args: argparse.Namespace) -> int:
    """basicsr's training pipeline with signals handled and a failed start undone
    (:mod:`elan_arch.training.startup`)."""
    from basicsr.train import train_pipeline

    from elan_arch.training import elastic, interrupt, notes, startup

    try:
        with interrupt.stop_on_signals():
            train_pipeline(os.getcwd())
    except interrupt.TrainingInterrupted as stop:  # saved; now the report (the console may be gone: the log has it)
        if elastic.is_main_process():
            command = elastic.resume_command(user_argv(args), args.launcher)
            notes.to_log_files(logging.WARNING, f'To continue: `{command}`')
            print(f'basicsr train: {stop}; continue with `{command}`', file=sys.stderr, flush=True)
        return 128 + stop.signum
    except BaseException as err:
        startup.after_failure(err, interrupt.training_started())
        raise
    return 0


def run_phase(args: argparse.Namespace) -> int:
    """Run ``args.phase`` ('train' or 'test') with basicsr's pipeline; return the exit code."""
    plugins = load_plugins()
    check_option_file(args.opt, plugins, [entry.split('=')[0].strip() for entry in args.force_yml or []], args.phase)
    from elan_arch.training import basicsr_fixes

    basicsr_fixes.apply()
    saved_argv = sys.argv
    sys.argv = [f'basicsr {args.phase}', *pipeline_argv(args)]
    try:
        if args.phase == 'train':
            return _train(args)
        from basicsr.test import test_pipeline

        test_pipeline(os.getcwd())
    finally:
        sys.argv = saved_argv
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    from elan_arch.cli import choose_wait_policy, run_command
    from elan_arch.utils.cpu_tuning import tune_process

    if argv is None:  # the command line (or torchrun's worker), not a call from Python
        words = sys.argv[1:]
        choose_wait_policy('basicsr', next((w for w in words if w in ('train', 'test')), None), words)
    args = build_parser().parse_args(argv)
    tune_process()
    return run_command('basicsr', args)


if __name__ == '__main__':
    sys.exit(main())
