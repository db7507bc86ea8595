"""Compare asrv builds, or option sets, on the benchmark's cases in interleaved rounds.

    python benchmarks/ab.py [--case KEY ...] [--rounds 3] [--seconds 4] NAME=SOURCE[:OPTIONS] ...

Each variant is a NAME, the SOURCE checkout whose `asrv` package runs (say a
`git worktree add /tmp/base HEAD~1`, or `.`), and optionally extra asrv options separated
by commas (`new=.:--loop,asyncio`). Every round runs every case on every variant, one
server at a time on 127.0.0.1 with a fresh root, so drift on a shared machine hits all
alike. It prints each run (req/s, server CPU per request, log flushes per 1,000 requests),
then per case the median req/s of each variant and its ratio to the first variant.
Cases (default: all of `run.py`'s): get4k-close, get4k-ka, get1m-ka, put4k-close, mix, and
over HTTPS get4k-ka-tls, get1m-ka-tls (every variant serves one self-signed certificate for
127.0.0.1, made with openssl in the temporary directory). asrv runs in its default
(persistent) connection mode; the 1 request/connection cases have wrk send
`Connection: close`, and a probe warns when a variant does not treat connections as a
case needs.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench_servers import (
    ServerError,
    Tls,
    connection_mode_problem,
    cpu_seconds,
    make_certificate,
    start_asrv,
    stop,
)
from bench_tools import ToolError, ensure_openssl, ensure_programs
from bench_wrk import WrkError, run_wrk, write_scripts
from run import CASES, Case, flushes_per_1k, fresh_site

CASE_KEYS = [case.key for case in CASES]


@dataclass(frozen=True)
class Variant:
    name: str
    source: Path
    options: tuple[str, ...]


def main() -> int:
    args = _parse_args()
    cases = [case for case in CASES if case.key in (args.case or CASE_KEYS)]
    try:
        wrk, _nginx = ensure_programs()
        openssl = ensure_openssl() if any(case.tls for case in cases) else None
    except ToolError as error:
        print(f"benchmarks/ab.py: {error}", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="asrv-ab-"))
    rates: dict[tuple[str, str], list[float]] = {}
    try:
        scripts = write_scripts(workdir)
        tls = None if openssl is None else make_certificate(openssl, workdir)
        for round_number in range(1, args.rounds + 1):
            for case in cases:
                for variant in args.variants:
                    rate = _run(
                        case,
                        variant,
                        wrk=wrk,
                        scripts=scripts,
                        tls=tls if case.tls else None,
                        seconds=args.seconds,
                        workdir=workdir,
                        round_number=round_number,
                    )
                    if rate is not None:
                        rates.setdefault((case.key, variant.name), []).append(rate)
    except ServerError as error:  # the certificate could not be made
        print(f"benchmarks/ab.py: {error}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print("\nmedian req/s, and ratio to the first variant:")
    for case in cases:
        first = rates.get((case.key, args.variants[0].name))
        for variant in args.variants:
            own = rates.get((case.key, variant.name))
            if not own:
                print(f"{case.key:12} {variant.name:12} failed")
                continue
            ratio = f"{statistics.median(own) / statistics.median(first):.2f}" if first else "-"
            print(f"{case.key:12} {variant.name:12} {statistics.median(own):9,.0f}  {ratio}")
    return 0


def _run(
    case: Case,
    variant: Variant,
    *,
    wrk: str,
    scripts: dict[str, Path],
    tls: Tls | None,
    seconds: int,
    workdir: Path,
    round_number: int,
) -> float | None:
    work, root = fresh_site(workdir, f"{case.key}-{variant.name}")
    label = f"round {round_number} {case.key:12} {variant.name:12}"
    client = None if tls is None else tls.client_context()
    try:
        server = start_asrv(
            root, work, fsync=True, source=variant.source, options=variant.options, tls=tls
        )
        try:
            problem = connection_mode_problem(
                server.port, "/file4k", keep_alive=case.keep_alive, tls=client
            )
            if problem is not None:
                print(f"{label} WARNING: asrv {problem}", flush=True)
            before = cpu_seconds(server.pid)
            result = run_wrk(
                wrk,
                server.url(case.path),
                clients=case.clients,
                seconds=seconds,
                close=not case.keep_alive,
                script=scripts[case.script] if case.script else None,
            )
            cpu = cpu_seconds(server.pid) - before
        finally:
            stop(server)
    except (ServerError, WrkError) as error:
        print(f"{label} FAILED: {error}", flush=True)
        return None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    flushes = flushes_per_1k(server.stopped_output)
    errors = f", errors: {result.describe_errors()}" if result.errors else ""
    print(
        f"{label} {result.rate:9,.0f} req/s, {1e6 * cpu / max(result.requests, 1):5.0f} us "
        f"CPU/req, {flushes if flushes is None else round(flushes)} flushes/1k{errors}",
        flush=True,
    )
    return result.rate


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--case", action="append", choices=CASE_KEYS, help="repeatable")
    parser.add_argument("--rounds", type=_positive, default=3)
    parser.add_argument("--seconds", type=_positive, default=4)
    parser.add_argument("variants", nargs="+", type=_variant, metavar="NAME=SOURCE[:OPTIONS]")
    return parser.parse_args()


def _variant(text: str) -> Variant:
    name, equals, rest = text.partition("=")
    if not name or not equals or not rest:
        raise argparse.ArgumentTypeError("expected NAME=SOURCE[:OPTIONS]")
    source, _, options = rest.partition(":")
    path = Path(source).resolve()
    if not (path / "asrv" / "__init__.py").is_file():
        raise argparse.ArgumentTypeError(f"{source}: no asrv package there")
    return Variant(name, path, tuple(option for option in options.split(",") if option))


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


if __name__ == "__main__":
    sys.exit(main())
