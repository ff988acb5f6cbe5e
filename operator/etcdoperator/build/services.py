"""The two Services: headless for member identity and peers, ClusterIP for clients."""

from __future__ import annotations

from etcdoperator.build.common import Manifest, metadata
from etcdoperator.naming import CLIENT_PORT, METRICS_PORT, PEER_PORT, ClusterRef


def peer_service(ref: ClusterRef) -> Manifest:
    """Headless; publishes not-ready pods too, since members must find each other before any is ready."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(ref, ref.peer_service, "peer-service"),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": ref.member_selector(),
            "ports": [
                {"name": "client", "port": CLIENT_PORT, "targetPort": "client", "protocol": "TCP"},
                {"name": "peer", "port": PEER_PORT, "targetPort": "peer", "protocol": "TCP"},
            ],
        },
    }


def client_service(ref: ClusterRef) -> Manifest:
    """What applications use: only ready members receive traffic."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(ref, ref.client_service, "client-service"),
        "spec": {
            "type": "ClusterIP",
            "selector": ref.member_selector(),
            "ports": [
                {"name": "client", "port": CLIENT_PORT, "targetPort": "client", "protocol": "TCP"},
                {"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics", "protocol": "TCP"},
            ],
        },
    }
