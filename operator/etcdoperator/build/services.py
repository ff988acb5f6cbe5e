"""The two Services: headless for member identity and peers, ClusterIP for clients."""

from __future__ import annotations

from etcdoperator.build.common import Manifest, metadata
from etcdoperator.naming import CLIENT_PORT, METRICS_PORT, PEER_PORT, ClusterRef


def _service(ref: ClusterRef, name: str, component: str, spec: dict) -> Manifest:
    return {"apiVersion": "v1", "kind": "Service", "metadata": metadata(ref, name, component), "spec": spec}


def _port(name: str, port: int) -> dict:
    return {"name": name, "port": port, "targetPort": name, "protocol": "TCP"}


def peer_service(ref: ClusterRef) -> Manifest:
    """Headless; publishes not-ready pods too, since members must find each other before any is ready."""
    return _service(
        ref,
        ref.peer_service,
        "peer-service",
        {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": ref.member_selector(),
            "ports": [_port("client", CLIENT_PORT), _port("peer", PEER_PORT)],
        },
    )


def client_service(ref: ClusterRef) -> Manifest:
    """What applications use (and backup Jobs): only ready voting members receive traffic -
    a learner refuses most requests."""
    return _service(
        ref,
        ref.client_service,
        "client-service",
        {
            "type": "ClusterIP",
            "selector": ref.voter_selector(),
            "ports": [_port("client", CLIENT_PORT), _port("metrics", METRICS_PORT)],
        },
    )
