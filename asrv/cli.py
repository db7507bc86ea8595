"""The command line: argv -> Config, run a Server on the chosen loop, map outcomes to exit codes.

The exit statuses are `asrv.ExitStatus`: 0 after SIGTERM or SIGINT, 1 for a bad or busy
port or an unusable root (with `Invalid Port` or one line naming the problem), 2 for a
malformed command line or option value, 3 when the server stopped itself because it could
no longer log what it did, 4 for a log it cannot open, 5 when start-up recovery fails, 6
when a second signal cut a shutdown short.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn, TextIO

from asrv import __version__
from asrv.config import Config, LoopChoice
from asrv.errors import ExitStatus, FatalError, StartupError
from asrv.server import Server

# Numbers are ASCII: Python's int() and float() also take the digits of other scripts
# (full-width ones, Arabic-Indic ones), which nobody means as a port or a count, and
# str.isdigit() takes superscripts.
_DIGITS = re.compile(r"[0-9]+")
_WHOLE_NUMBER = re.compile(r"[+-]?[0-9]{1,30}")
_DECIMAL = re.compile(r"[0-9]{1,30}(\.[0-9]{0,30})?|\.[0-9]{1,30}")


def _whole_number(text: str) -> int:
    if _WHOLE_NUMBER.fullmatch(text) is None:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}")
    return int(text)


def _seconds(text: str) -> float:
    if _DECIMAL.fullmatch(text) is None:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}")
    return float(text)


def build_parser(prog: str = "asrv") -> argparse.ArgumentParser:
    """The command line; `prog` is how the user ran it (`asrv` or `python -m asrv`)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Serve the regular files of a directory over HTTP/1.1 (GET, HEAD, PUT, "
        "DELETE), "
        "logging every request, in a linearizable order, to a durable audit log.",
        epilog="examples:\n"
        f"  {prog} --threads 4 8080\n"
        f"  {prog} --root /srv/files --log audit.log --host 0.0.0.0 --write-tokens writers 0\n"
        f"  {prog} --course 8080",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    defaults = Config()
    parser.add_argument(
        "port",
        nargs="?",
        default=str(defaults.port),
        help="TCP port, 1-65535; 0 picks a free one (default: %(default)s)",
    )
    parser.add_argument(
        "-t",
        "--threads",
        type=_whole_number,
        default=defaults.threads,
        help="worker threads, at least 1 (default: %(default)s)",
    )
    parser.add_argument(
        "-l",
        "--log",
        default=defaults.log,
        help="audit log file, appended to; '-' is standard error (default: %(default)s)",
    )
    parser.add_argument(
        "--root",
        type=Path,
        default=defaults.root,
        help="directory whose files are served (default: current directory)",
    )
    parser.add_argument(
        "--host", default=defaults.host, help="numeric address to bind (default: %(default)s)"
    )
    parser.add_argument(
        "--timeout",
        type=_seconds,
        default=defaults.timeout,
        help="seconds a connection may go without sending or accepting a "
        "byte (default: %(default)s)",
    )
    parser.add_argument(
        "--head-timeout",
        type=_seconds,
        default=defaults.head_timeout,
        help="seconds a request head may take, however it trickles in (default: %(default)s)",
    )
    parser.add_argument(
        "--min-rate",
        type=_whole_number,
        default=defaults.min_rate,
        help="bytes/s a request body must average after its first --timeout seconds "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--max-connections",
        type=_whole_number,
        default=defaults.max_connections,
        help="connections beyond this are closed on accept (default: %(default)s)",
    )
    parser.add_argument(
        "--max-body",
        type=_whole_number,
        default=defaults.max_body,
        metavar="BYTES",
        help="largest Content-Length accepted; larger gets 413 (default: no limit)",
    )
    parser.add_argument(
        "--course",
        action="store_true",
        help="the course's exact behaviour: its header grammar and 2048-byte heads, one "
        "request per connection, GET and PUT only",
    )
    parser.add_argument(
        "--max-head",
        type=_whole_number,
        default=None,
        metavar="BYTES",
        help="largest request head (default: 8192, or 2048 with --course)",
    )
    parser.add_argument(
        "--read-only", action="store_true", help="PUT and DELETE get 403 (default: off)"
    )
    parser.add_argument(
        "--write-tokens",
        type=Path,
        metavar="FILE",
        help="file of bearer tokens, one a line: PUT and DELETE need one (default: anyone "
        "may write); re-read on SIGHUP",
    )
    parser.add_argument(
        "--read-tokens",
        type=Path,
        metavar="FILE",
        help="file of bearer tokens that GET and HEAD need; a write token reads too "
        "(default: anyone may read); re-read on SIGHUP",
    )
    parser.add_argument(
        "--tls-cert", type=Path, metavar="PEM", help="serve HTTPS with this certificate chain"
    )
    parser.add_argument("--tls-key", type=Path, metavar="PEM", help="the private key of --tls-cert")
    parser.add_argument(
        "--keep-alive",
        action="store_true",
        help="accepted for compatibility: connections persist by default (not with --course)",
    )
    parser.add_argument(
        "--no-fsync",
        dest="fsync",
        action="store_false",
        help="write audit lines and PUT data without fsync (faster, not "
        "durable across a power cut)",
    )
    parser.add_argument(
        "--loop",
        choices=[choice.value for choice in LoopChoice],
        default=defaults.loop.value,
        help="event loop (default: %(default)s, uvloop when installed)",
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="no start-up or shutdown lines (errors only)"
    )
    parser.add_argument("--version", action="version", version=f"asrv {__version__}")
    return parser


def parse_config(argv: Sequence[str] | None = None, prog: str = "asrv") -> tuple[Config, bool]:
    """The server's configuration and whether to be quiet; `StartupError` if invalid."""
    args = build_parser(prog).parse_args(argv)
    if _DIGITS.fullmatch(args.port) is None or not 0 <= int(args.port) <= 65535:
        raise StartupError("Invalid Port", ExitStatus.CANNOT_START)
    try:
        config = Config(
            port=int(args.port),
            threads=args.threads,
            log=args.log,
            root=args.root,
            host=args.host,
            timeout=args.timeout,
            head_timeout=args.head_timeout,
            min_rate=args.min_rate,
            max_connections=args.max_connections,
            max_body=args.max_body,
            course=args.course,
            max_head=args.max_head,
            fsync=args.fsync,
            loop=LoopChoice(args.loop),
            read_only=args.read_only,
            write_tokens=args.write_tokens,
            read_tokens=args.read_tokens,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
        )
    except ValueError as error:
        raise StartupError(f"asrv: {error}", ExitStatus.USAGE) from None
    return config, args.quiet


def main(argv: Sequence[str] | None = None, prog: str = "asrv") -> int:
    """Run the server as the command line does; returns the exit status."""
    try:
        config, quiet = parse_config(argv, prog)
        loop_factory, loop_name = _loop_factory(config.loop)
    except StartupError as error:
        print(error.lines(), file=sys.stderr)
        return error.status
    diagnostics = sys.stdout if config.log_is_stderr else sys.stderr
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(_serve(config, _Diagnostics(diagnostics, quiet), loop_name))


def run(prog: str = "asrv") -> NoReturn:
    """Entry point of the `asrv` console script, and of `python -m asrv` with that as `prog`
    (so that `--help` shows the command the user typed, as `asrv.load` and `asrv.check` do)."""
    sys.exit(main(prog=prog))


class _Diagnostics:
    """The server's own lines: never on the audit log's stream; only errors when quiet."""

    def __init__(self, stream: TextIO, quiet: bool) -> None:
        self._stream = stream
        self._quiet = quiet

    def info(self, line: str) -> None:
        if not self._quiet:
            print(line, file=self._stream, flush=True)

    def error(self, line: str) -> None:
        print(line, file=self._stream, flush=True)


async def _serve(config: Config, diagnostics: _Diagnostics, loop_name: str) -> int:
    server = Server(config)
    # Until the server can re-read its tokens, a SIGHUP (a reload sent early) must not end
    # the process, as its default action would.
    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, lambda: None)
    try:
        await server.start()
    except StartupError as error:
        if config.log_is_stderr and error.status in _ABOUT_THE_LOG:
            # Standard error is the audit log, already identified as such: a line in it
            # would be read back as a request by the next start.
            diagnostics.error(error.lines())
        else:
            print(error.lines(), file=sys.stderr)
        return error.status
    # The audit log owns its stream: when it is standard error, Python's own reports
    # (warnings, tracebacks) must not land in it.
    saved_stderr = sys.stderr
    if config.log_is_stderr:
        sys.stderr = sys.stdout
    try:
        try:
            _install_signal_handlers(server, diagnostics)
            for warning in server.access_warnings():
                diagnostics.error(warning)
            if server.recovery:
                diagnostics.info(f"asrv: {server.recovery.describe()}")
            diagnostics.info(
                f"asrv {__version__}: listening on {'https' if config.tls else 'http'}://"
                f"{_format_host(config.host)}:"
                f"{server.port} (root {config.root.resolve()}, {config.threads} workers, log "
                f"{'stderr' if config.log_is_stderr else config.log}, "
                f"fsync {'on' if config.fsync else 'off'}, loop {loop_name})"
            )
            await server.serve_forever()
        finally:
            await server.close()
    except FatalError as error:
        diagnostics.error(f"asrv: stopped: {error}")
        return ExitStatus.FATAL
    finally:
        sys.stderr = saved_stderr
    log = server.audit_log
    diagnostics.info(
        f"asrv: stopped after {log.last_seq} requests logged in {log.syncs} log flushes"
    )
    return ExitStatus.OK


_ABOUT_THE_LOG = (ExitStatus.LOG_UNUSABLE, ExitStatus.RECOVERY_FAILED)
"""Start-up failures met once the log has been opened."""


def _install_signal_handlers(server: Server, diagnostics: _Diagnostics) -> None:
    loop = asyncio.get_running_loop()
    signals_seen = 0
    closing: list[asyncio.Task[None]] = []

    def on_signal() -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen > 1:
            # Impatient operator: leave now. Whatever was acknowledged is durable already,
            # and start-up recovery settles the rest.
            os._exit(ExitStatus.INTERRUPTED)
        task = loop.create_task(server.close())
        # `_serve` awaits the same close and reports how it ended; marking the outcome
        # retrieved here keeps a failed close from being reported twice.
        task.add_done_callback(lambda done: done.cancelled() or done.exception())
        closing.append(task)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal)

    def on_hangup() -> None:
        for line in server.reload_tokens():
            diagnostics.error(line)

    loop.add_signal_handler(signal.SIGHUP, on_hangup)


def _loop_factory(choice: LoopChoice) -> tuple[Callable[[], asyncio.AbstractEventLoop], str]:
    if choice is LoopChoice.ASYNCIO:
        return asyncio.new_event_loop, "asyncio"
    try:
        import uvloop  # noqa: PLC0415 (optional at run time)
    except ImportError:
        if choice is LoopChoice.UVLOOP:
            raise StartupError(
                "asrv: --loop uvloop: uvloop is not installed", ExitStatus.USAGE
            ) from None
        return asyncio.new_event_loop, "asyncio"
    return uvloop.new_event_loop, "uvloop"


def _format_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
