"""The package's shape: every module imports on its own, no import cycles, ``import elan_arch`` loads only
what registration needs, moved modules are gone from their old paths, and modules stay readable in size."""
from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Set

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / 'elan_arch'
#: Modules over this many lines need a reason here.
MAX_LINES = 400
LONG_MODULES: Dict[str, str] = {}
#: Old module paths (before the package was grouped by purpose) that must not come back. The documented
#: ``elan_arch.spandrel_support`` and ``elan_arch.inference`` (now a package) are kept on purpose.
MOVED = ['elan_arch.compat', 'elan_arch.errors', 'elan_arch.fileio', 'elan_arch.extras', 'elan_arch.allocator',
         'elan_arch.data.images', 'elan_arch.data.check', 'elan_arch.data.prepare_div2k',
         'elan_arch.data.prepare_benchmark', 'elan_arch.data.demo_data', 'elan_arch.data.lmdb_writer',
         'elan_arch.data.jobs', 'elan_arch.data.subimages', 'elan_arch.startup', 'elan_arch.resume',
         'elan_arch.interrupt', 'elan_arch.elastic', 'elan_arch.train_patches', 'elan_arch.upscale_io',
         'elan_arch.upscale_pipeline', 'elan_arch.checkpoint', 'elan_arch.checkpoint_formats',
         'elan_arch.export_onnx', 'elan_arch.onnx_backend', 'elan_arch.bench_train', 'elan_arch.flops',
         'elan_arch.demo_report', 'elan_arch.models.test_time']
#: What ``import elan_arch`` (run by every BasicSR start) may load: the registering packages and the
#: small shared pieces they use.
REGISTRATION = ('elan_arch.archs', 'elan_arch.models', 'elan_arch.data', 'elan_arch.utils')


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def modules() -> Dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob('*.py'))}


def imported_modules(name: str, path: Path, known: Set[str]) -> Set[str]:
    """The package's modules that ``path`` imports anywhere (top level, inside functions, under
    TYPE_CHECKING), resolved to module names: ``from a.b import c`` counts ``a.b.c`` if it is a module."""
    is_package = path.name == '__init__.py'
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:
                anchor = name.split('.') if is_package else name.split('.')[:-1]
                anchor = anchor[:len(anchor) - node.level + 1]
                base = '.'.join(anchor + ([base] if base else []))
            targets = [f'{base}.{alias.name}' if f'{base}.{alias.name}' in known else base for alias in node.names]
        else:
            continue
        found.update(t for t in targets if t in known and t != name)
    return found


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}) == [['a', 'b', 'c']]
    assert cycles({'a': {'b'}, 'b': set()}) == []


def test_no_import_cycles():
    mods = modules()
    graph = {name: imported_modules(name, path, set(mods)) for name, path in mods.items()}
    assert sum(len(v) for v in graph.values()) > 100  # the walk sees the package's imports
    assert cycles(graph) == []


def test_every_module_imports_on_its_own():
    names = [n for n in modules() if not n.endswith('__main__')]
    # Each import starts with no elan_arch module loaded and nothing of this package in basicsr's registries
    # (which would refuse a second registration); basicsr itself stays imported, as in any process.
    script = (
        'import importlib, sys\n'
        'import elan_arch\n'
        'from basicsr.utils import registry\n'
        'registries = [r for r in vars(registry).values() if isinstance(r, registry.Registry)]\n'
        'failed = []\n'
        f'for name in {names!r}:\n'
        '    for loaded in [m for m in sys.modules if m == "elan_arch" or m.startswith("elan_arch.")]:\n'
        '        del sys.modules[loaded]\n'
        '    for r in registries:\n'
        '        for key in [k for k, v in r._obj_map.items() if v.__module__.startswith("elan_arch")]:\n'
        '            del r._obj_map[key]\n'
        '    try:\n'
        '        importlib.import_module(name)\n'
        '    except Exception as error:\n'
        '        failed.append(f"{name}: {type(error).__name__}: {error}")\n'
        'print("\\n".join(failed))\n')
    out = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ''


def loaded_modules(code: str) -> List[str]:
    out = subprocess.run([sys.executable, '-c', f'import sys\n{code}\nprint("\\n".join(sys.modules))'],
                         capture_output=True, text=True, timeout=120, check=True)
    return out.stdout.split()


def test_import_elan_arch_loads_neither_torch_nor_basicsr():
    loaded = loaded_modules('import elan_arch')
    assert 'elan_arch.utils.basicsr_compat' in loaded
    assert [m for m in loaded if m.split('.')[0] in ('torch', 'basicsr') or m.startswith(REGISTRATION[:3])] == []


@pytest.mark.parametrize('code', ['import elan_arch, basicsr', 'import elan_arch\nimport basicsr.utils.registry',
                                  'from elan_arch.archs import ELAN', 'import elan_arch.data',
                                  'from elan_arch.models.elan_model import ELANModel'])
def test_basicsr_loaded_means_everything_registered_and_nothing_more(code):
    loaded = [m for m in loaded_modules(code + '\nfrom basicsr.utils.registry import ARCH_REGISTRY as A, '
                                        'MODEL_REGISTRY as M, DATASET_REGISTRY as D\n'
                                        'A.get("ELAN"), M.get("ELANModel"), D.get("ELANPairedImageDataset")')
              if m.startswith('elan_arch.')]
    assert 'elan_arch.archs.elan_arch' in loaded and 'elan_arch.data.paired_image_dataset' in loaded
    assert 'elan_arch.models.elan_model' in loaded
    assert [m for m in loaded if not m.startswith(REGISTRATION)] == []


@pytest.mark.parametrize('old', MOVED)
def test_moved_modules_are_gone_from_their_old_paths(old):
    assert importlib.util.find_spec(old) is None


def test_documented_entry_points_still_work():
    import elan_arch
    import elan_arch.inference
    import elan_arch.spandrel_support
    from elan_arch.cli import basicsr_cmd

    assert elan_arch.ELAN.__name__ == 'ELAN' and set(elan_arch.ELAN_VARIANTS) == {'ELAN-light', 'ELAN'}
    assert callable(elan_arch.inference.upscale_array) and callable(basicsr_cmd.main)
    assert callable(elan_arch.spandrel_support.install)
    assert importlib.util.find_spec('elan_arch.demo.__main__') is not None


def test_modules_stay_readable_in_size():
    long = {name: len(path.read_text().splitlines()) for name, path in modules().items()}
    long = {name: n for name, n in long.items() if n > MAX_LINES and name not in LONG_MODULES}
    assert long == {}
