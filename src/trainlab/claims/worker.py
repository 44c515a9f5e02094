"""A worker process of the local executor: `python -m trainlab.claims.worker THREADS`.

It reads (job id, payload) pairs pickled on stdin, runs each, and writes (job id, result dict)
pickled on its original stdout. Anything the run prints goes to stderr, so it cannot corrupt the
protocol. Workers are plain subprocesses rather than multiprocessing children, so that a user's
script that calls trainlab.check at top level (without `if __name__ == "__main__":`) works.
"""
from __future__ import annotations

import os
import pickle
import sys


def serve(threads: int) -> None:
    protocol_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # prints of the run go to stderr
    sys.stdout = sys.stderr
    import torch

    torch.set_num_threads(threads)
    from trainlab.claims.executors import execute_payload

    stdin = sys.stdin.buffer
    while True:
        try:
            job_id, payload = pickle.load(stdin)
        except EOFError:
            return
        result = execute_payload(payload)
        try:
            pickle.dump((job_id, result), protocol_out)
            protocol_out.flush()
        except BrokenPipeError:  # the driver is gone (interrupted): nobody is left to tell
            return


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", sys.argv[1] if len(sys.argv) > 1 else "1")
    serve(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
