"""What the RabbitMQ peers' bench scripts share: the workloads and timing of redis_peer_common
(imported as is), with the AMQP URL passed where that module says ``--redis-url``, and a
cleanup that deletes the run's queues through ``rabbitmqctl`` (AMQP cannot list queues; each
peer brings a different AMQP library). Standard library only.
"""

from __future__ import annotations

import fnmatch
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import redis_peer_common as common

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"


def rabbitmqctl(*args: str) -> str:
    done = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=120)
    return done.stdout if done.returncode == 0 else ""


def delete_matching(url: str, pattern: str) -> int:
    """Delete the queues whose name matches ``pattern`` (fnmatch); ``url`` is unused."""
    names = rabbitmqctl("list_queues", "name", "--quiet", "--no-table-headers").split()
    doomed = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
    for name in doomed:
        rabbitmqctl("delete_queue", name)
    return len(doomed)


def main(peer: common.Peer, script: str) -> None:
    common.delete_matching = delete_matching
    if "--redis-url" not in sys.argv:
        sys.argv += ["--redis-url", os.environ.get("BENCH_AMQP_URL", DEFAULT_URL)]
    common.main(peer, script)
