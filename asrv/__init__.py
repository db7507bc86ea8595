"""asrv: a multi-threaded HTTP/1.1 file server whose audit log is a durable linearization."""

from asrv.access import Tokens
from asrv.config import Config, LoopChoice
from asrv.errors import ExitStatus, FatalError, StartupError
from asrv.server import Server, serve

__version__ = "0.1.0"

__all__ = [
    "Config",
    "ExitStatus",
    "FatalError",
    "LoopChoice",
    "Server",
    "StartupError",
    "Tokens",
    "__version__",
    "serve",
]
