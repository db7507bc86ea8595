"""The command line's parser: any argument list ends in a Config, a usage error or
`Invalid Port`, never a traceback; numbers are ASCII digits only."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asrv import ExitStatus, StartupError
from asrv.cli import parse_config

OPTIONS = [
    "-t", "--threads", "-l", "--log", "--root", "--host", "--timeout", "--head-timeout",
    "--min-rate", "--max-connections", "--max-body", "--max-head", "--course", "--keep-alive",
    "--no-fsync", "--loop", "-q", "--", "-",
]  # fmt: skip
VALUES = st.one_of(
    st.sampled_from(["0", "1", "4", "8080", "65535", "65536", "-1", "1e3", "nan", "inf", ".5"]),
    st.sampled_from(
        ["\u00b2", "\uff18", "\u0664", "0x10", "1_000", " 1", "1 ", "", "asyncio", "::1"]
    ),
    st.text(max_size=12),
)
ARGUMENTS = st.lists(st.one_of(st.sampled_from(OPTIONS), VALUES), max_size=8)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ARGUMENTS)
def test_any_arguments_parse_or_fail_cleanly(argv: list[str]) -> None:
    quiet_stream = io.StringIO()
    with contextlib.redirect_stderr(quiet_stream), contextlib.redirect_stdout(quiet_stream):
        try:
            config, _ = parse_config(argv)
        except SystemExit as leaving:  # argparse's usage error (or --help, --version)
            assert leaving.code in (0, ExitStatus.USAGE)
            return
        except StartupError as error:
            assert error.status in (ExitStatus.CANNOT_START, ExitStatus.USAGE)
            assert "\n" not in str(error)
            return
    assert 0 <= config.port <= 65535
    assert config.threads >= 1


@pytest.mark.parametrize(
    "argv",
    [
        ["-t", "\uff14", "0"],
        ["--timeout", "\u0663", "0"],
        ["--max-body", "\u00b9", "0"],
        ["--timeout", "nan"],
    ],
)
def test_numbers_are_ascii_digits(argv: list[str]) -> None:
    with contextlib.redirect_stderr(io.StringIO()), pytest.raises(SystemExit) as leaving:
        parse_config(argv)
    assert leaving.value.code == ExitStatus.USAGE


@pytest.mark.parametrize("port", ["\u00b2", "\uff18\uff10\uff18\uff10", "\u0668\u0660\u0668\u0660"])
def test_ports_in_other_digits_are_invalid(port: str) -> None:
    with pytest.raises(StartupError, match=r"^Invalid Port$"):
        parse_config([port])


@pytest.mark.parametrize(
    ("command", "prog"),
    [
        (["-m", "asrv"], "python -m asrv"),
        (["-m", "asrv.load"], "python -m asrv.load"),
        (["-m", "asrv.check"], "python -m asrv.check"),
    ],
)
def test_help_and_usage_errors_name_the_command_as_typed(command: list[str], prog: str) -> None:
    helped = subprocess.run(
        [sys.executable, *command, "--help"], check=False, capture_output=True, text=True
    )
    assert helped.returncode == 0 and helped.stdout.startswith(f"usage: {prog} ["), helped.stdout
    wrong = subprocess.run(
        [sys.executable, *command, "--no-such-option"], check=False, capture_output=True
    )
    assert wrong.returncode == ExitStatus.USAGE
    assert wrong.stderr.decode().startswith(f"usage: {prog} [")


def test_the_console_script_calls_itself_asrv() -> None:
    script = Path(sys.executable).parent / "asrv"
    if not script.exists():
        pytest.skip(f"no console script beside {sys.executable}: asrv is not installed there")
    helped = subprocess.run([str(script), "--help"], check=False, capture_output=True, text=True)
    assert helped.returncode == 0 and helped.stdout.startswith("usage: asrv ["), helped.stdout
    assert "\n  asrv --threads 4 8080\n" in helped.stdout
