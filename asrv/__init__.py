"""asrv: a multi-threaded HTTP/1.1 file server whose audit log is a durable linearization."""

from asrv.config import Config, LoopChoice
from asrv.errors import FatalError
from asrv.server import Server, StartupError

__version__ = "0.1.0"

__all__ = ["Config", "FatalError", "LoopChoice", "Server", "StartupError", "__version__"]
