"""Kubernetes Events on the EtcdCluster (and EtcdBackup) for every significant action."""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Mapping
from typing import Any

from etcdoperator.kube import EVENTS, ApiError, Kube

log = logging.getLogger(__name__)
COMPONENT = "etcd-operator"


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def event_manifest(
    obj: Mapping[str, Any], reason: str, message: str, *, warning: bool = False
) -> dict[str, Any]:
    """A core/v1 Event about `obj` (pure)."""
    meta = obj.get("metadata", {})
    ns = meta.get("namespace")
    now = _now()
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{meta.get('name')}.{time.time_ns():x}", "namespace": ns},
        "involvedObject": {
            "apiVersion": obj.get("apiVersion"),
            "kind": obj.get("kind"),
            "name": meta.get("name"),
            "namespace": ns,
            "uid": meta.get("uid"),
        },
        "reason": reason,
        "message": message[:1024],
        "type": "Warning" if warning else "Normal",
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }


async def post(
    kube: Kube, obj: Mapping[str, Any], reason: str, message: str, *, warning: bool = False
) -> None:
    """Best effort: an event that cannot be written is logged, never fatal."""
    meta = obj.get("metadata", {})
    ns = meta.get("namespace")
    log.log(
        logging.WARNING if warning else logging.INFO, "[%s/%s] %s: %s", ns, meta.get("name"), reason, message
    )
    try:
        await kube.create(EVENTS, ns, event_manifest(obj, reason, message, warning=warning))
    except (ApiError, OSError) as e:
        log.warning("could not post event %s: %s", reason, e)
