"""HTTP/1 endpoints on the client port (and the metrics port): /health, /livez, /readyz,
/version, /metrics. The JSON gateway and the v2 keys API mount their routes on the same app.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from etcdstore import ETCD_VERSION, errors, metrics
from etcdstore.logs import get_logger

if TYPE_CHECKING:
    from etcdstore.server.api import ServerAPI

log = get_logger("etcdstore.http")


async def check_health(s: ServerAPI, exclude_alarms: set[str] = frozenset()) -> tuple[bool, str]:
    """etcd's /health rule: no active alarm, a known leader, and a quorum read that succeeds."""
    from etcdstore.proto.etcdserverpb import rpc_pb2

    for _, alarm in s.alarms.list():
        name = rpc_pb2.AlarmType.Name(alarm)
        if name not in exclude_alarms:
            return False, f"ALARM {name}"
    if s.leader_id == 0:
        return False, "RAFT NO LEADER"
    try:
        await asyncio.wait_for(s.read_index(timeout=1.0), 1.0)
    except (TimeoutError, errors.EtcdError):
        return False, "QUORUM READ FAILED"
    return True, ""


def _health_response(ok: bool) -> web.Response:
    body = json.dumps({"health": "true" if ok else "false"})
    if ok:
        return web.Response(text=body, content_type="text/plain")
    # etcd answers through http.Error: status 503, body plus a newline.
    return web.Response(text=body + "\n", status=503, content_type="text/plain")


def add_base_routes(app: web.Application, s: ServerAPI, registry: object | None = None) -> None:
    async def health(request: web.Request) -> web.Response:
        exclude = set(request.query.getall("exclude", []))
        ok, reason = await check_health(s, exclude)
        if not ok:
            metrics.HEALTH_FAILURES.inc()
            log.warning("/health error", reason=reason)
        else:
            metrics.HEALTH_SUCCESS.inc()
        return _health_response(ok)

    async def livez(request: web.Request) -> web.Response:
        # Alive: the process answers and its drive loop is running.
        return web.Response(text="ok") if not s.removed else web.Response(text="removed", status=503)

    async def readyz(request: web.Request) -> web.Response:
        # As etcd 3.5's /readyz: a NOSPACE alarm does not make a member unready (reads still work);
        # any other alarm (CORRUPT) does.
        ok, reason = await check_health(s, {"NOSPACE"})
        return web.Response(text="ok" if ok else f"not ready: {reason}", status=200 if ok else 503)

    async def version(request: web.Request) -> web.Response:
        body = json.dumps(
            {"etcdserver": ETCD_VERSION, "etcdcluster": ETCD_VERSION.rsplit(".", 1)[0] + ".0"},
            separators=(",", ":"),
        )
        return web.Response(body=body.encode(), headers={"Content-Type": "application/json"})

    async def metrics_handler(request: web.Request) -> web.Response:
        data = generate_latest(registry) if registry is not None else generate_latest()
        return web.Response(body=data, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.router.add_get("/health", health)
    app.router.add_get("/livez", livez)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/version", version)
    app.router.add_get("/metrics", metrics_handler)
