from asrv.cli import run

run()
