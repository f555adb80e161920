"""A runner in a new Python process: ``python -m edge_mailbox.worker.fresh_runner FD WORKER
MODULE:NAME``, started by the worker (runners.py) for a job that cannot be forked safely.

It is the forked runner's loop without the fork: its end of the worker's pipe is descriptor
FD (the job's spec, keys included, comes over it; nothing secret is on this command line or
in the environment), it ends its job when WORKER dies, and it runs the job with MODULE's
NAME (``job_process.run`` in the worker), imported here, after the interpreter started
clean: no Task SDK preloaded, no heap frozen, no state of the worker's.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from multiprocessing.connection import Connection

from edge_mailbox.worker.runners import serve_runner

# The worker's own log format (worker/cli.py): the runner's lines go to the worker's stderr.
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: python -m edge_mailbox.worker.fresh_runner FD WORKER MODULE:NAME")
        return 2
    fd, worker, target = int(argv[0]), int(argv[1]), argv[2]
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, stream=sys.stderr)
    module, _, name = target.partition(":")
    run = getattr(importlib.import_module(module), name)
    return serve_runner(Connection(fd), run, worker)


if __name__ == "__main__":
    code = main(sys.argv[1:])
    logging.shutdown()
    os._exit(code)
