"""The README tells the truth about the command line: its options, their defaults, first steps."""

from __future__ import annotations

import argparse
import re
import textwrap
from pathlib import Path

import pytest

from asrv.cli import build_parser
from asrv.http import DEFAULT_MAX_HEAD

README = Path(__file__).parent.parent / "README.md"


def section(title: str) -> str:
    """The README's text under `## title`, up to the next heading of that level."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README.read_text(), re.M | re.S)
    assert match is not None, f"README has no '## {title}' section"
    return match[1]


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """Each fenced code block, in order, as (info string, text); a block indented under a
    list item is dedented."""
    blocks = re.findall(r"^( *)```(\w*)\n(.*?)^\1```", text, re.M | re.S)
    return [(info, textwrap.dedent(body)) for _indent, info, body in blocks]


def code_blocks(text: str) -> list[list[str]]:
    """The lines of each fenced code block, in order."""
    return [body.splitlines() for _info, body in fenced_blocks(text)]


def documented_options() -> dict[str, tuple[set[str], str]]:
    """The command-line table: spellings and default of each row, keyed by its last spelling."""
    lines = section("Command line").splitlines()
    header = lines.index("| option | meaning | default |")
    rows: dict[str, tuple[set[str], str]] = {}
    for line in lines[header + 2 :]:
        if not line.startswith("|"):
            break
        option, _meaning, default = (cell.strip() for cell in line.strip("|").split("|"))
        spellings = re.findall(r"`([^`]+)`", option)
        assert spellings, f"a row names no option in backquotes: {line}"
        rows[spellings[-1]] = (set(spellings), default)
    return rows


def parser_options() -> dict[str, tuple[set[str], str]]:
    """What the README should say: every option but --help, and the positional PORT."""
    options: dict[str, tuple[set[str], str]] = {}
    for action in build_parser()._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        spellings = set(action.option_strings) or {action.dest.upper()}
        options[max(spellings, key=len)] = (spellings, documented_default(action))
    return options


def documented_default(action: argparse.Action) -> str:
    """How the table's default column shows an option's default."""
    default = action.default
    if default is argparse.SUPPRESS:  # --version
        return ""
    if action.nargs == 0:  # a flag: --keep-alive is "off"; --no-fsync leaves "fsync on"
        return f"{action.dest} on" if default is True else "off"
    if action.dest == "max_head":  # None: the grammar's own limit
        return str(DEFAULT_MAX_HEAD)
    if action.dest in ("write_tokens", "read_tokens"):  # None: no token needed
        return f"anyone may {action.dest.split('_')[0]}"
    if action.dest in ("tls_cert", "tls_key"):  # None: no TLS
        return "plain HTTP"
    if default is None:
        return "no limit"
    if default == Path("."):
        return "current directory"
    if isinstance(default, float) and default.is_integer():
        return str(int(default))
    return str(default)


def default_shown(cell: str) -> str:
    """A default cell without backquotes and a trailing remark: "`auto` (uvloop ...)" is auto."""
    return cell.split(" (", maxsplit=1)[0].replace("`", "").strip()


def test_command_line_table_lists_exactly_the_parsers_options() -> None:
    documented, defined = documented_options(), parser_options()
    missing = sorted(set(defined) - set(documented))
    extra = sorted(set(documented) - set(defined))
    assert (missing, extra) == ([], []), f"README rows missing: {missing}; not options: {extra}"
    for name, (spellings, _) in defined.items():
        assert sorted(documented[name][0]) == sorted(spellings), f"README row of {name}"


def test_command_line_table_shows_the_parsers_defaults() -> None:
    documented, defined = documented_options(), parser_options()
    shown = {name: default_shown(documented[name][1]) for name in defined if name in documented}
    assert shown == {name: default for name, (_, default) in defined.items() if name in shown}


def test_synopsis_names_every_long_option() -> None:
    (synopsis, *_) = code_blocks(section("Command line"))
    text = " ".join(synopsis)
    assert text.startswith("python -m asrv ")
    names = [name for name in parser_options() if name.startswith("--") and name != "--version"]
    assert [name for name in names if not re.search(rf"{name}\b", text)] == []


@pytest.mark.parametrize(
    ("index", "command"),
    [
        (0, "python -m pip install . && python -m asrv --threads 4 8080"),
        (1, "python -m pip install nox && nox"),
    ],
)
def test_first_commands_install_serve_and_test(index: int, command: str) -> None:
    (first, *_) = code_blocks(README.read_text())
    commands = [line.strip() for line in first if line.strip()]
    assert commands[index] == command
