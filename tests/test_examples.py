"""The examples in examples/ run as documented."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).parent.parent / "examples"


def test_embed_example(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "embed.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "HTTP/1.1 201 Created" in done.stdout
    assert "hello from an embedded server" in done.stdout
    assert done.stdout.endswith("audit log:\nPUT,/greeting.txt,201,1\nGET,/greeting.txt,200,2\n")
    assert (tmp_path / "greeting.txt").read_text() == "hello from an embedded server\n"
