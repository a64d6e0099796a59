"""Ray Serve 2.60 starts an inter-deployment gRPC server in every replica bound to `[::]:0`,
every interface, whatever the node's address (serve/_private/replica.py; no setting changes
it). Replicas dial each other at the node's IP, so binding that IP instead loses nothing: a
cluster on 127.0.0.1 then listens on loopback only, a real one on its private address only.
Ray is pinned (chatd[cluster]), so the one function replaced here is known."""

from __future__ import annotations

import ray
from ray.serve._private import replica

ANY = "[::]:0"


def on_node_ip() -> None:
    """Idempotent; in each replica process, before its replica starts (at import)."""
    start = replica.add_port_to_grpc_server
    if getattr(start, "on_node_ip", False):
        return

    def bound(server, address: str) -> int:
        if address == ANY:
            ip = ray.util.get_node_ip_address()
            address = f"[{ip}]:0" if ":" in ip else f"{ip}:0"
        return start(server, address)

    bound.on_node_ip = True
    replica.add_port_to_grpc_server = bound
