"""`python -m ptune_dist.launcher.torchrun ARGS`: torchrun (torch.distributed.run, the same arguments), which
says which ranks failed and how instead of printing a traceback.

torchrun stops every rank when one fails and raises ChildFailedError, whose report (a traceback and a
table) is meant for a person. Here the failures it observed first go, as JSON, to the file named by
PTUNE_FAILURES (launcher/restarts.py reads it: which rank, its exit status or signal, this host) and the
process exits 1, as torchrun does; the launcher prints the one line about it. Without PTUNE_FAILURES the
failures are printed on stderr, one line each.

torchrun's report also lists the ranks it stopped itself once one had failed (SIGTERM, SIGKILL after 30 s,
or their own exit on that TERM): each failure says whether it was seen before the group was stopped
(`first`), by remembering torchrun's failures when it closes the group (SubprocessContext.close; on a torch
without that attribute every failure counts as first, and restarts.classify orders them by kind).
"""

from __future__ import annotations

import json
import os
import socket
import sys

from .restarts import FAILURES_ENV


def main(argv: list[str]) -> int:
    from torch.distributed.elastic.multiprocessing import api
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    first: set[int] = set()  # pids of the ranks that had failed when torchrun stopped the group
    close = api.SubprocessContext.close

    def closing(self, *args, **kwargs):
        if not first:
            first.update(f.pid for f in getattr(self, "_failures", {}).values())
        return close(self, *args, **kwargs)

    api.SubprocessContext.close = closing
    try:
        run(parse_args(argv))
    except ChildFailedError as e:
        host = socket.gethostname()
        failures = [
            {
                "rank": int(rank),
                "exitcode": int(f.exitcode),
                "pid": int(f.pid),
                "time": float(f.timestamp),
                "host": host,
                "first": not first or f.pid in first,
            }
            for rank, f in e.failures.items()
        ]
        path = os.environ.get(FAILURES_ENV)
        if path:
            with open(path, "w") as out:  # a file in the launcher's own 0700 folder
                json.dump(failures, out)
        else:
            for f in failures:
                print(f"ptune: rank {f['rank']} on {host} ended with exit status {f['exitcode']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
