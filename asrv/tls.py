"""TLS for the listener: the server's SSL context, from PEM files or the application.

Python's ssl module and uvloop's TLS start no thread; the handshake runs on the loop, and a
client that stalls in it is dropped after `--timeout` like one that stalls anywhere else.
Under TLS a file cannot go out with sendfile(2) (the kernel would send it unencrypted):
`Channel.send_file` refuses, and `FileSender` copies the file through the pool in bounded
pieces instead.
"""

from __future__ import annotations

import errno
import os
import ssl
import stat
from pathlib import Path

from asrv.config import Config
from asrv.errors import StartupError


def server_context(config: Config) -> ssl.SSLContext | None:
    """The context to serve with, or None for plain HTTP; StartupError (one line, exit 1)
    when the certificate or key cannot be used."""
    if config.ssl_context is not None:
        return config.ssl_context
    if config.tls_cert is None or config.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        _require_regular_files(config.tls_cert, config.tls_key)
        # Never a passphrase prompt on the terminal: a server may have none to answer it.
        context.load_cert_chain(config.tls_cert, config.tls_key, password=_no_passphrase)
    except (OSError, ssl.SSLError) as error:
        why = error.strerror if isinstance(error, OSError) and error.strerror else error
        raise StartupError(
            f"asrv: cannot use TLS certificate {config.tls_cert} with key {config.tls_key}: {why}"
        ) from None
    # HTTP/1.1 only: no ALPN for h2, which asrv does not speak.
    context.set_alpn_protocols(["http/1.1"])
    return context


def _require_regular_files(*paths: Path) -> None:
    """OpenSSL would wait forever reading a FIFO: anything but a regular file is refused
    (stat does not block)."""
    for path in paths:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise OSError(errno.EINVAL, f"{path} is not a regular file")


def _no_passphrase() -> str:
    raise OSError(errno.EINVAL, "the key is encrypted (asrv takes an unencrypted key)")
