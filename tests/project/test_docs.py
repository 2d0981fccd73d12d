"""The README and the guides in docs/: every relative link resolves, and every command they show exists
(``elan``/``basicsr`` subcommands and their options, make targets, scripts and option files)."""
from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGES = sorted([REPO / 'README.md', REPO / 'datasets' / 'README.md', *(REPO / 'docs').rglob('*.md')])
LINK = re.compile(r'!?\[[^\]]*\]\(([^)\s]+)(?:\s+"[^"]*")?\)')
FENCE = re.compile(r'```(?:bash|sh|shell|console)?\n(.*?)```', re.S)


def relative_links(page: Path) -> Iterator[str]:
    text = re.sub(r'```.*?```', '', page.read_text(), flags=re.S)  # links inside code are not links
    for target in LINK.findall(text):
        if not re.match(r'^[a-z][a-z0-9+.-]*:', target) and not target.startswith('#'):
            yield target


def test_pages_exist():
    assert REPO / 'README.md' in PAGES and len(PAGES) >= 5


@pytest.mark.parametrize('page', PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page):
    broken = [t for t in relative_links(page) if not (page.parent / t.split('#')[0]).resolve().exists()]
    assert broken == []


def test_link_check_sees_links():
    assert len(list(relative_links(REPO / 'README.md'))) >= 5


def shell_commands(page: Path) -> Iterator[List[str]]:
    """Each command line of the page's shell code blocks, split into words (continuations joined,
    comments and prompts dropped, pipelines and ``&&`` chains split)."""
    for block in FENCE.findall(page.read_text()):
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


def parser_options(parser: argparse.ArgumentParser, words: List[str]) -> Tuple[List[str], Set[str]]:
    """Follow subcommands in ``words``; the path taken and the option strings of the parser reached."""
    path = []
    for word in words:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or word not in subs[0].choices:
            break
        parser = subs[0].choices[word]
        path.append(word)
    return path, {s for a in parser._actions for s in a.option_strings}


def parsers() -> Dict[str, argparse.ArgumentParser]:
    from elan_arch.cli import basicsr_cmd, build_parser

    return {'elan': build_parser(), 'basicsr': basicsr_cmd.build_parser()}


def unknown_in(command: List[str], known: Dict[str, argparse.ArgumentParser]) -> List[str]:
    """What of ``command`` does not exist in this repository (empty when it all does)."""
    words = command[1:] if command[0] in ('time', 'sudo') else command
    if not words:
        return []
    if len(words) > 2 and words[0].startswith('python') and words[1] == '-m':
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
        path, options = parser_options(known[words[0]], words[1:])
        if not path:
            return problems + [f'{words[0]} {words[1] if len(words) > 1 else ""}: no such subcommand']
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
