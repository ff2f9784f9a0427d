"""The docs and the CLI agree: every `ibreports ...` command shown in README.md and docs/*.md
exists with the flags it is shown with, every command's --help says what it does, shows the
global --config/--debug and its exit codes, and the README's links lead to pages that exist."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from ibreports.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command path, its parser) for every command and sub-command."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from _commands(sub, (*path, name))


def _snippets(text: str) -> list[str]:
    """Code the pages show: indented or fenced blocks, and `inline` spans."""
    found, fenced = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
            continue
        if fenced or line.startswith("    "):
            found.append(line.strip())
        found += re.findall(r"`([^`]+)`", line)
    return found


def _shown_commands() -> list[tuple[str, str]]:
    """(page, command line) for every `ibreports <command> ...` the docs show: at the start of a
    snippet or after a `$ ` prompt always; after `;`, `&&`, `|`, `(` or `:` (prose and sample
    output use those too) when the next word names a command."""
    names = {path[0] for path, _ in _commands(build_parser())}
    shown = []
    for page in PAGES:
        for snippet in _snippets(page.read_text()):
            for match in re.finditer(r"(^|\$\s*|[;&|(:]\s*)(?:\S*/)?ibreports (\S.*)", snippet):
                line = match.group(2).split(" #")[0].strip()
                if match.group(1).strip() in ("", "$") or line.split()[0] in names or line.startswith("--"):
                    shown.append((page.name, "ibreports " + line))
    return shown


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {opt for action in parser._actions for opt in action.option_strings}


SHOWN = _shown_commands()


def test_the_docs_show_commands():
    assert len(SHOWN) > 40
    assert {page for page, _ in SHOWN} >= {"README.md", "keys.md", "fetch-and-archive.md",
                                          "doctor-and-troubleshooting.md"}


@pytest.mark.parametrize("page,line", SHOWN, ids=[f"{p}:{line[:60]}" for p, line in SHOWN])
def test_every_command_shown_exists_with_its_flags(page, line):
    parser = build_parser()
    commands = dict(_commands(parser))
    try:
        words = shlex.split(line.replace("[", " ").replace("]", " "))[1:]
    except ValueError:  # an unbalanced quote in a shortened example: the words before it will do
        words = line.replace("[", " ").replace("]", " ").split()[1:]
    path: tuple[str, ...] = ()
    while words and (*path, words[0]) in commands:
        path = (*path, words.pop(0))
    assert path, f"{page}: `{line}` names no ibreports command"
    known = _options(commands[path]) | _options(parser)
    for word in words:
        if word.startswith("--"):
            flag = word.split("=")[0]
            assert flag in known, f"{page}: `{line}`: ibreports {' '.join(path)} has no {flag}"


@pytest.mark.parametrize("path", [" ".join(p) for p, _ in _commands(build_parser())])
def test_every_command_help_describes_it_shows_the_global_flags_and_exit_codes(path, capsys):
    parser = build_parser()
    with pytest.raises(SystemExit) as done:
        parser.parse_args([*path.split(), "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    usage, _, rest = text.partition("\n\n")
    description = rest.split("\n\n")[0]
    assert usage.startswith("usage: ibreports ") and description and not description.startswith(
        ("options:", "positional arguments:")), text
    assert "--config PATH" in text and "--debug" in text and "config file" in text
    assert "exit codes: 0 " in text


def test_readme_links_lead_to_pages_that_exist():
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)#]+)\)", readme)
    local = [link for link in links if not link.startswith("http")]
    assert "docs/keys.md" in local and len(readme.splitlines()) < 200
    for link in local:
        assert (ROOT / link).exists(), link
