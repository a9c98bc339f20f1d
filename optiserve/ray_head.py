"""Start the local Ray head without ``ray.init``'s idle waits, and with only what serving needs
on the way to the first answer.

What ``ray.init`` does on a new head node, and what is changed here (Ray 2.60, read from
``ray/_private/node.py`` and ``services.py``; measured with ``benchmarks/startup.py``):

- It starts the dashboard and waits until it has published its address before it even starts
  the raylet; the dashboard then forks one process per module (nine), all importing Ray and
  aiohttp on the cores the replicas load on. The autoscaler monitor and the log monitor start
  with it. Nothing before the first answer needs any of them: the launcher deploys through
  Serve's controller (the same ``apply_config`` the REST API's PUT calls), the dashboard agent
  that serves metrics is the raylet's, and ``log_to_driver`` is off. So these three
  ``Node.start_*`` calls are recorded, not run, and :meth:`HeadStart.start_deferred` runs
  Ray's own methods later, unchanged (same commands, logs, KV entries and process registry,
  so ``ray.shutdown`` stops them as before).
- It then polls the GCS for the raylet's registration with a fixed 1 s sleep between tries
  (``GlobalStateAccessor::GetNode``), while the raylet registers ~1 s after its start: up to
  1 s idle. The poll here asks every 20 ms first, then lets Ray's own call succeed at once.

Ray spawns each process with ``PR_SET_PDEATHSIG``, which fires when the spawning *thread*
ends: :meth:`HeadStart.start_deferred` must run on a thread that lives as long as the cluster
(the main thread).
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager

log = logging.getLogger(__name__)

#: Node methods deferred, in the order Ray calls them
DEFERRED = ("start_monitor", "start_api_server", "start_log_monitor")


class HeadStart:
    """Around ``ray.init``: :meth:`deferring`; once serving: :meth:`start_deferred`."""

    def __init__(self, dashboard_address: str, poll_s: float = 0.02):
        self.dashboard_address = dashboard_address
        self.poll_s = poll_s
        self._pending: list = []

    @contextmanager
    def deferring(self):
        """The head node's dashboard, autoscaler monitor and log monitor are recorded instead
        of started; the raylet's registration is polled every ``poll_s``."""
        from ray._private import services
        from ray._private.node import Node

        if not all(hasattr(Node, n) for n in DEFERRED) or not hasattr(services, "get_node"):
            # another Ray than the pinned one: its own ray.init, waits included, rather than
            # a patch that no longer fits
            log.warning("Ray %s has no %s: starting its head as ray.init does (slower)",
                        getattr(__import__("ray"), "__version__", "?"), ", ".join(
                            [n for n in DEFERRED if not hasattr(Node, n)] or ["get_node"]))
            yield self
            return
        originals = {name: getattr(Node, name) for name in DEFERRED}
        get_node = services.get_node
        pending = self._pending

        def deferred(name):
            def record(node, *args, **kwargs):
                pending.append(lambda: originals[name](node, *args, **kwargs))
                if name == "start_api_server":
                    # the raylet is told the dashboard's address, as when Ray starts it first
                    node._webui_url = self.dashboard_address
            return record

        def get_node_soon(gcs_address, node_id):
            self._wait_registered(gcs_address, node_id)
            return get_node(gcs_address, node_id)

        for name in DEFERRED:
            setattr(Node, name, deferred(name))
        services.get_node = get_node_soon
        try:
            yield self
        finally:
            for name, method in originals.items():
                setattr(Node, name, method)
            services.get_node = get_node

    def _wait_registered(self, gcs_address: str, node_id: str, timeout_s: float = 30.0):
        """Until the GCS lists the node ALIVE (or on any doubt: Ray's own wait follows)."""
        from ray._raylet import GcsClient, NodeID
        from ray.core.generated.gcs_pb2 import GcsNodeInfo

        try:
            client = GcsClient(address=gcs_address)
            node = NodeID.from_hex(node_id)
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                info = client.get_all_node_info(timeout=5).get(node)
                if info is not None and info.state == GcsNodeInfo.ALIVE:
                    return
                time.sleep(self.poll_s)
        except Exception:
            return

    @property
    def pending(self) -> bool:
        """Some deferred process is not started yet."""
        return bool(self._pending)

    def start_deferred(self) -> None:
        """Start what ``ray.init`` deferred, in Ray's order; the dashboard start waits until it
        serves (Ray's own wait, and its error if it cannot). No-op when ``ray.init`` started no
        head node (it joined a running cluster)."""
        while self._pending:
            self._pending.pop(0)()


__all__ = ["DEFERRED", "HeadStart"]
