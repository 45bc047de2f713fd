"""`registry-sync worker-health`: is every consumer of this host's `worker` answering?

A consumer process of `registry-sync worker` is named `<queue>@<hostname>.<pid>`
(worker/main.py). The check sends Celery's remote-control `ping` to the consumers of this
host only and waits for one answer per expected queue. The ping is answered by the
consumer's own loop, not by the task threads, so a worker busy with long syncs is still
alive; one that is wedged (lost its broker connection for good, deadlocked) is not.
Used as the Kubernetes liveness probe of the worker (an `exec` probe in the same container).
"""

from __future__ import annotations

import socket
from collections.abc import Sequence

from core.queue import make_celery
from core.settings import Settings


def ping_consumers(settings: Settings, queues: Sequence[str], timeout: float = 5.0,
                   hostname: str | None = None) -> dict[str, bool]:
    """{queue: answered} for the consumers of `hostname` (default: this host). Never raises
    for a broker failure: every queue is then reported as not answering."""
    host = hostname or socket.gethostname()
    app = make_celery(settings, name="registry-sync-health")
    app.conf.broker_connection_timeout = timeout
    try:
        replies = app.control.ping(
            timeout=timeout, limit=len(queues), pattern=f"*@{host}.*", matcher="glob"
        )
    except Exception:  # broker unreachable: the worker cannot be doing its job either
        replies = []
    finally:
        app.close()
    nodes = {name for reply in replies for name in reply}
    return {q: any(n.startswith(f"{q}@{host}.") for n in nodes) for q in queues}
