"""The command line: argv -> Config, run a Server on the chosen loop, map outcomes to exit codes.

Exit status: 0 after a clean shutdown (SIGTERM or SIGINT), 1 when the server cannot start
(a bad option value, a bad or busy port, an unusable root or log), 2 for a malformed command
line (argparse's usage error), 3 when the server stopped itself because it could no longer
log what it did (fail-stop). A second signal during shutdown exits at once with 1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn, TextIO

from asrv import __version__
from asrv.config import Config, LoopChoice
from asrv.errors import FatalError
from asrv.server import Server, StartupError

EXIT_OK = 0
EXIT_STARTUP = 1
EXIT_FATAL = 3


class _UsageError(Exception):
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="asrv",
        description="Serve the regular files of a directory over HTTP/1.1 (GET and PUT), "
        "logging every request, in a linearizable order, to a durable audit log.",
        epilog="examples:\n"
        "  asrv --threads 4 8080\n"
        "  asrv --root /srv/files --log audit.log --host 127.0.0.1 0\n"
        "  asrv --keep-alive --no-fsync 8080",
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
        type=int,
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
        type=float,
        default=defaults.timeout,
        help="seconds a connection may go without sending or accepting a "
        "byte (default: %(default)s)",
    )
    parser.add_argument(
        "--keep-alive", action="store_true", help="keep connections open for further requests"
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
    parser.add_argument("--version", action="version", version=f"asrv {__version__}")
    return parser


def parse_config(argv: Sequence[str] | None = None) -> Config:
    args = build_parser().parse_args(argv)
    if not args.port.isdigit() or not 0 <= int(args.port) <= 65535:
        raise _UsageError("Invalid Port")
    try:
        return Config(
            port=int(args.port),
            threads=args.threads,
            log=args.log,
            root=args.root,
            host=args.host,
            timeout=args.timeout,
            keep_alive=args.keep_alive,
            fsync=args.fsync,
            loop=LoopChoice(args.loop),
        )
    except ValueError as error:
        raise _UsageError(str(error)) from None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server as the command line does; returns the exit status."""
    try:
        config = parse_config(argv)
    except _UsageError as error:
        print(error, file=sys.stderr)
        return EXIT_STARTUP
    diagnostics = sys.stdout if config.log_is_stderr else sys.stderr
    try:
        loop_factory, loop_name = _loop_factory(config.loop)
    except ImportError as error:
        print(f"asrv: {error}", file=sys.stderr)
        return EXIT_STARTUP
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(_serve(config, diagnostics, loop_name))


def run() -> NoReturn:
    """Entry point of the `asrv` console script and `python -m asrv`."""
    sys.exit(main())


async def _serve(config: Config, diagnostics: TextIO, loop_name: str) -> int:
    server = Server(config)
    try:
        await server.start()
    except StartupError as error:
        print(error, file=sys.stderr)
        return EXIT_STARTUP
    # The audit log owns its stream: when it is standard error, Python's own reports
    # (warnings, tracebacks) must not land in it.
    saved_stderr = sys.stderr
    if config.log_is_stderr:
        sys.stderr = sys.stdout
    try:
        try:
            _install_signal_handlers(server)
            if server.recovery:
                print(f"asrv: {server.recovery.describe()}", file=diagnostics, flush=True)
            print(
                f"asrv {__version__}: listening on http://{_format_host(config.host)}:"
                f"{server.port} (root {config.root.resolve()}, {config.threads} workers, log "
                f"{'stderr' if config.log_is_stderr else config.log}, "
                f"fsync {'on' if config.fsync else 'off'}, loop {loop_name})",
                file=diagnostics,
                flush=True,
            )
            await server.serve_forever()
        finally:
            await server.close()
    except FatalError as error:
        print(f"asrv: stopped: {error}", file=diagnostics, flush=True)
        return EXIT_FATAL
    finally:
        sys.stderr = saved_stderr
    log = server.audit_log
    print(
        f"asrv: stopped after {log.last_seq} requests logged in {log.syncs} log flushes",
        file=diagnostics,
        flush=True,
    )
    return EXIT_OK


def _install_signal_handlers(server: Server) -> None:
    loop = asyncio.get_running_loop()
    signals_seen = 0
    closing: list[asyncio.Task[None]] = []

    def on_signal() -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen > 1:
            # Impatient operator: leave now. Whatever was acknowledged is durable already.
            os._exit(EXIT_STARTUP)
        closing.append(loop.create_task(server.close()))

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal)


def _loop_factory(choice: LoopChoice) -> tuple[Callable[[], asyncio.AbstractEventLoop], str]:
    if choice is LoopChoice.ASYNCIO:
        return asyncio.new_event_loop, "asyncio"
    try:
        import uvloop  # noqa: PLC0415 (optional at run time)
    except ImportError:
        if choice is LoopChoice.UVLOOP:
            raise ImportError("--loop uvloop: uvloop is not installed") from None
        return asyncio.new_event_loop, "asyncio"
    return uvloop.new_event_loop, "uvloop"


def _format_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
