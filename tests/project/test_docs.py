"""The README and the guides in docs/: every relative link resolves (to a file, and to a heading of it where
the link names one), and every command their shell blocks show exists (``elan``/``basicsr`` subcommands at
every level and their options, ``python -m elan_arch.demo`` options, make targets, scripts and option files)."""
from __future__ import annotations

import argparse
import contextlib
import functools
import io
import re
import shlex
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGES = sorted([REPO / 'README.md', REPO / 'datasets' / 'README.md', *(REPO / 'docs').rglob('*.md')])
LINK = re.compile(r'!?\[[^\]]*\]\(([^)\s]+)(?:\s+"[^"]*")?\)')
FENCE = re.compile(r'^ {0,3}(`{3,}|~{3,})\s*([^`\s]*)')  # an opening or closing code fence and its language
SHELL = {'', 'bash', 'sh', 'shell', 'console'}  # untagged blocks are checked as commands too


def split_code(page: Path) -> Tuple[List[Tuple[str, str]], str]:
    """The page's fenced code blocks as (language, text), each fence closed by the next fence line of the
    same character and at least its length (as CommonMark reads them), and the prose without them."""
    blocks: List[Tuple[str, str]] = []
    prose: List[str] = []
    fence, language, lines = '', '', []  # type: str, str, List[str]
    for line in page.read_text().splitlines():
        match = FENCE.match(line)
        if not fence:
            if match:
                fence, language, lines = match.group(1), match.group(2).lower(), []
            else:
                prose.append(line)
        elif match and not match.group(2) and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence):
            blocks.append((language, '\n'.join(lines) + '\n'))
            fence = ''
        else:
            lines.append(line)
    assert not fence, f'{page}: a code block is never closed'
    return blocks, '\n'.join(prose)


def relative_links(page: Path, anchors: bool = False) -> Iterator[str]:
    """Links to files of the repository (``anchors``: also links within the page, ``#heading``)."""
    for target in LINK.findall(split_code(page)[1]):  # links inside code are not links
        if not re.match(r'^[a-z][a-z0-9+.-]*:', target) and (anchors or not target.startswith('#')):
            yield target


def heading_anchors(page: Path) -> Set[str]:
    """The anchors GitHub gives the page's headings (lower case; punctuation but ``-`` and ``_`` dropped;
    spaces to ``-``; a repeated heading gets ``-1``, ``-2``...), and explicit ``id``/``name`` anchors."""
    prose = split_code(page)[1]
    anchors: Set[str] = set(re.findall(r'<a\s+(?:name|id)="([^"]+)"', prose))
    for heading in re.findall(r'^#{1,6}\s+(.+?)\s*#*\s*$', prose, re.M):
        text = re.sub(r'!?\[([^\]]*)\]\([^)]*\)', r'\1', heading)  # a link's text
        slug = re.sub(r'[^\w\- ]', '', text.lower()).replace(' ', '-')
        anchor, n = slug, 0
        while anchor in anchors:
            n += 1
            anchor = f'{slug}-{n}'
        anchors.add(anchor)
    return anchors


def test_pages_exist():
    assert REPO / 'README.md' in PAGES and len(PAGES) >= 5


@pytest.mark.parametrize('page', PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page):
    broken = [t for t in relative_links(page) if not (page.parent / t.split('#')[0]).resolve().exists()]
    assert broken == []


def test_link_check_sees_links():
    assert len(list(relative_links(REPO / 'README.md'))) >= 5


def broken_anchors(page: Path) -> List[str]:
    """Links ``file.md#anchor`` and ``#anchor`` of the page whose anchor is no heading of the file."""
    broken = []
    for target in relative_links(page, anchors=True):
        path, _, anchor = target.partition('#')
        file = (page.parent / path).resolve() if path else page
        if anchor and file.suffix == '.md' and file.exists() and anchor not in heading_anchors(file):
            broken.append(target)
    return broken


@pytest.mark.parametrize('page', PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_link_anchors_are_headings(page):
    assert broken_anchors(page) == []


def test_the_anchor_check_catches_a_missing_heading(tmp_path):
    (tmp_path / 'other.md').write_text('# Title\n\n## The `elan upscale --onnx` part\n\n## Part\n\n## Part\n')
    page = tmp_path / 'page.md'
    page.write_text('[a](other.md#the-elan-upscale---onnx-part) [b](other.md#part-1) [c](#title) [d](#nowhere)\n'
                    '[e](other.md#no-such-part)\n\n# Title\n```bash\n[f](other.md#in-code)\n```\n')
    assert broken_anchors(page) == ['#nowhere', 'other.md#no-such-part']


def test_code_blocks_are_read_fence_to_fence(tmp_path):
    """A block of another language does not shift which text counts as shell: prose after it is prose,
    and the next shell block is read."""
    page = tmp_path / 'page.md'
    page.write_text('```yaml\nname: x\n```\nprose: elan frobnicate\n\n```bash\nbasicsr trian -opt x.yml\n```\n'
                    '```python\nimport x\n```\n```\nelan prepare chek\n```\n````console\n$ elan x\n```\n````\n')
    blocks = split_code(page)[0]
    assert [language for language, _ in blocks] == ['yaml', 'bash', 'python', '', 'console']
    assert [' '.join(c) for c in shell_commands(page)] == ['basicsr trian -opt x.yml', 'elan prepare chek',
                                                            'elan x', '```']


def shell_commands(page: Path) -> Iterator[List[str]]:
    """Each command line of the page's shell code blocks, split into words (continuations joined,
    comments and prompts dropped, pipelines and ``&&`` chains split)."""
    for language, block in split_code(page)[0]:
        if language not in SHELL:
            continue
        for line in block.replace('\\\n', ' ').splitlines():
            line = re.sub(r'^\s*\$\s+', '', line)
            try:
                words = shlex.split(line, comments=True)
            except ValueError:
                continue
            command: List[str] = []
            for word in words + ['&&']:
                if word in ('&&', '||', '|', ';'):
                    if command:
                        yield command
                    command = []
                else:
                    command.append(word)


def parser_options(parser: argparse.ArgumentParser, words: List[str]) -> Tuple[List[str], Set[str], bool]:
    """Follow subcommands in ``words``; the path taken, the option strings of the parser reached, and whether
    that parser still expects a subcommand (it has subcommands of its own)."""
    path = []
    for word in words:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or word not in subs[0].choices:
            break
        parser = subs[0].choices[word]
        path.append(word)
    expects = any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)
    return path, {s for a in parser._actions for s in a.option_strings}, expects


@functools.lru_cache(maxsize=None)
def demo_options(realworld: bool) -> Set[str]:
    """The options ``python -m elan_arch.demo`` (or ``... --realworld``) accepts, read from its ``--help``."""
    from elan_arch.demo import run

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        run.main(['--realworld', '--help'] if realworld else ['--help'])
    return set(re.findall(r'(?<![\w-])(--?[a-zA-Z][\w-]*)', out.getvalue())) | {'--realworld'}


def parsers() -> Dict[str, argparse.ArgumentParser]:
    from elan_arch.cli import basicsr_cmd, build_parser

    return {'elan': build_parser(), 'basicsr': basicsr_cmd.build_parser()}


def unknown_in(command: List[str], known: Dict[str, argparse.ArgumentParser]) -> List[str]:
    """What of ``command`` does not exist in this repository (empty when it all does)."""
    words = command[1:] if command[0] in ('time', 'sudo') else command
    if not words:
        return []
    if len(words) > 2 and words[0].startswith('python') and words[1] == '-m':
        if words[2] == 'elan_arch.demo':
            options = demo_options('--realworld' in words)
            return [f'python -m elan_arch.demo: no option {w.split("=")[0]}' for w in words[3:]
                    if w.startswith('-') and w.split('=')[0] not in options]
        if words[2] == 'elan_arch':
            words = ['elan', *words[3:]]
        elif words[2] == 'elan_arch.cli.basicsr_cmd':
            words = ['basicsr', *words[3:]]
    if words[0] == 'torchrun':
        at = next((i for i, w in enumerate(words) if w == 'elan_arch.cli.basicsr_cmd'), None)
        if at is None:
            return []
        words = ['basicsr', *words[at + 1:]]
    problems = []
    for word in words:
        for path in re.findall(r'(?:^|=)((?:options|scripts)/[\w./-]+\.(?:yml|py|sh))$', word):
            if not (REPO / path).exists():
                problems.append(path)
    if words[0] in known:
        path, options, expects = parser_options(known[words[0]], words[1:])
        if not path:
            return problems + [f'{words[0]} {words[1] if len(words) > 1 else ""}: no such subcommand']
        rest = words[1 + len(path):]
        if expects and rest and not rest[0].startswith('-'):
            return problems + [f'{words[0]} {" ".join(path)} {rest[0]}: no such subcommand']
        problems += [f'{words[0]} {" ".join(path)}: no option {w.split("=")[0]}' for w in words[1 + len(path):]
                     if w.startswith('-') and w not in ('-', '--') and not re.match(r'^-\d', w)
                     and w.split('=')[0] not in options]
    elif words[0] == 'make' and len(words) > 1:
        targets = set(re.findall(r'^([\w-]+):', (REPO / 'Makefile').read_text(), re.M))
        problems += [f'make {w}: no such target' for w in words[1:] if '=' not in w and w not in targets]
    return problems


def test_the_command_check_catches_what_does_not_exist():
    known = parsers()
    assert unknown_in(['elan', 'upscale', '--no-such-option', 'x.png'], known) == [
        'elan upscale: no option --no-such-option']
    assert unknown_in(['elan', 'frobnicate'], known) == ['elan frobnicate: no such subcommand']
    assert unknown_in(['elan', 'prepare', 'chek', '--no-such-flag'], known) == ['elan prepare chek: no such subcommand']
    assert unknown_in(['python', '-m', 'elan_arch.demo', '--iters', '30', '--no-such'], known) == [
        'python -m elan_arch.demo: no option --no-such']
    assert unknown_in(['python', '-m', 'elan_arch.demo', '--variant', 'window8', '--iters', '3'], known) == []
    assert unknown_in(['make', 'nothing-here'], known) == ['make nothing-here: no such target']
    assert unknown_in(['basicsr', 'train', '-opt', 'options/missing.yml'], known) == ['options/missing.yml']
    assert unknown_in(['basicsr', 'train', '-opt', 'options/train_ELAN_light_x4.yml', '--auto_resume'], known) == []


@pytest.mark.parametrize('page', PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_commands_shown_exist(page):
    known = parsers()
    problems = [f'{" ".join(c)}: {p}' for c in shell_commands(page) for p in unknown_in(c, known)]
    assert problems == []


def test_the_readme_shows_the_two_quick_start_commands_and_stays_a_front_page():
    readme = REPO / 'README.md'
    commands = [' '.join(c) for c in shell_commands(readme)]
    assert 'make demo' in commands and 'make test' in commands
    assert len(readme.read_text().splitlines()) <= 250


def test_nothing_cites_a_spec_file_outside_the_repository():
    outside = 'ELAN' + '.md'  # the facts file beside the repository; docs/elan_spec.md is the project's own
    cited = [str(p.relative_to(REPO)) for p in REPO.rglob('*') if p.is_file() and p.suffix in ('.py', '.md', '.yml')
             and '.git' not in p.parts and outside in p.read_text(errors='ignore')]
    assert cited == []


def test_weights_the_pages_upscale_with_are_what_an_option_file_writes():
    """``--weights experiments/<name>/models/...`` in a shown command: ``<name>`` is the ``name`` of an option
    file (where ``basicsr train`` of it writes), so the example works after that training."""
    import yaml

    names = {yaml.safe_load(path.read_text())['name'] for path in (REPO / 'options').rglob('*.yml')}
    shown = [(str(page.relative_to(REPO)), weights.split('/')[1]) for page in PAGES
             for command in shell_commands(page) for option, weights in zip(command, command[1:])
             if option == '--weights' and re.match(r'experiments/[^/<]+/models/', weights)]
    assert ('README.md', 'ELAN_light_x4_DIV2K') in shown
    assert [entry for entry in shown if entry[1] not in names] == []
