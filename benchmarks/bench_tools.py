"""Find, and install from Debian if missing, the external programs the benchmark drives."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

# Debian starts a freshly installed nginx as a system service on port 80; this file makes
# invoke-rc.d refuse for the duration of the install, so nothing is left running.
POLICY_RC_D = Path("/usr/sbin/policy-rc.d")
SBIN_DIRS = ("/usr/sbin", "/usr/local/sbin", "/sbin")


class ToolError(Exception):
    """A program or module the benchmark needs is missing and cannot be installed."""


def which(name: str) -> str | None:
    """`shutil.which`, also looking in the sbin directories a non-root PATH may lack."""
    found = shutil.which(name)
    if found is not None:
        return found
    for directory in SBIN_DIRS:
        candidate = Path(directory, name)
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def ensure_programs(*, tls: bool = False) -> tuple[str, str]:
    """Return the paths of wrk and nginx, installing the Debian packages if either is missing;
    with `tls`, nginx must also serve HTTPS."""
    missing = [name for name in ("wrk", "nginx") if which(name) is None]
    if missing:
        _apt_install(missing)
    wrk, nginx = which("wrk"), which("nginx")
    if wrk is None or nginx is None:
        raise ToolError("wrk or nginx is still missing after apt-get install")
    if "http_dav_module" not in nginx_build(nginx):
        raise ToolError(
            f"{nginx} was built without the WebDAV module (dav_methods PUT); "
            "install Debian's nginx or nginx-light package"
        )
    if tls and "http_ssl_module" not in nginx_build(nginx):
        raise ToolError(f"{nginx} was built without the SSL module (`listen ... ssl`)")
    return wrk, nginx


def ensure_openssl() -> str:
    """Return the path of openssl, which makes the TLS cases' certificate, installing the
    Debian package if it is missing."""
    if which("openssl") is None:
        _apt_install(["openssl"])
    openssl = which("openssl")
    if openssl is None:
        raise ToolError("openssl is still missing after apt-get install")
    return openssl


def ensure_modules() -> None:
    """asrv, and aiohttp and uvloop for the peer, must run in this interpreter; say how if not."""
    missing = [name for name in ("aiohttp", "uvloop") if importlib.util.find_spec(name) is None]
    if missing:
        raise ToolError(
            f"{' and '.join(missing)} not importable by {sys.executable}: "
            f"run `{sys.executable} -m pip install {' '.join(missing)}` "
            "(the nox session `bench` installs them)"
        )
    probe = [sys.executable, "-m", "asrv", "--version"]
    if subprocess.run(probe, capture_output=True, check=False).returncode != 0:
        raise ToolError(
            f"`{sys.executable} -m asrv` does not run: install asrv first (`pip install .`)"
        )


def nginx_build(nginx: str) -> str:
    """`nginx -V` output (it goes to standard error)."""
    result = subprocess.run([nginx, "-V"], capture_output=True, text=True, check=False)
    return result.stderr + result.stdout


def program_version(argv: list[str]) -> str:
    """The first line a program prints about its version, or `?`."""
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    lines = (result.stdout + result.stderr).strip().splitlines()
    return lines[0].strip() if lines else "?"


def _apt_install(packages: list[str]) -> None:
    if shutil.which("apt-get") is None:
        raise ToolError(f"{', '.join(packages)} missing and no apt-get to install them")
    if os.geteuid() != 0:
        raise ToolError(
            f"{', '.join(packages)} missing: run `apt-get install -y wrk nginx` as root"
        )
    print(f"installing {' '.join(packages)} with apt-get", file=sys.stderr, flush=True)
    placed_policy = False
    if not POLICY_RC_D.exists():
        POLICY_RC_D.write_text("#!/bin/sh\nexit 101\n")
        POLICY_RC_D.chmod(0o755)
        placed_policy = True
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", *packages], check=True, env=env)
    except subprocess.CalledProcessError as error:
        raise ToolError(f"apt-get install {' '.join(packages)} failed: {error}") from error
    finally:
        if placed_policy:
            POLICY_RC_D.unlink(missing_ok=True)
