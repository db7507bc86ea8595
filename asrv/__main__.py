from asrv.cli import run

run(prog="python -m asrv")
