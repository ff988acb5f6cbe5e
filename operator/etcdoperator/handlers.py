"""kopf wiring: one reconcile loop (a kopf daemon) per EtcdCluster, woken by changes.

Importing this module registers the handlers; `etcdoperator run` imports it and runs kopf.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
from pathlib import Path
from typing import Any

import kopf

from etcdoperator import backups, crd, events
from etcdoperator.build.common import Images
from etcdoperator.kube import PODS, PVCS, STATEFULSETS, Kube
from etcdoperator.naming import LABEL_COMPONENT, LABEL_INSTANCE, LABEL_MANAGED_BY, MANAGED_BY, ClusterRef
from etcdoperator.planner import PlannerConfig
from etcdoperator.reconciler import ClusterReconciler, Settings
from etcdoperator.spec import parse_cluster_spec

log = logging.getLogger(__name__)


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


class OperatorState:
    """Process-wide: credentials from kopf's login, the API client, wake-up events per cluster."""

    def __init__(self) -> None:
        self.connection: Any = None
        self._kube: Kube | None = None
        self.wakers: dict[tuple[str, str], asyncio.Event] = {}
        self.namespaces: list[str] = []  # served namespaces (empty: all), set by `etcdoperator run`
        self.tasks: list[asyncio.Task[None]] = []
        self.settings = Settings(
            images=Images.from_env(),
            secrets_dir=Path(os.environ.get("ETCDOPERATOR_SECRETS_DIR", "/tmp/etcdoperator")),
            planner=PlannerConfig(
                crashloop_restarts=int(os.environ.get("ETCDOPERATOR_CRASHLOOP_RESTARTS", "5"))
            ),
            progress_deadline=_env_float("ETCDOPERATOR_PROGRESS_DEADLINE", 600.0),
        )
        self.busy_interval = _env_float("ETCDOPERATOR_BUSY_INTERVAL", 1.0)
        self.idle_interval = _env_float("ETCDOPERATOR_IDLE_INTERVAL", 15.0)
        self.error_interval = _env_float("ETCDOPERATOR_ERROR_INTERVAL", 5.0)

    def kube(self) -> Kube:
        if self._kube is None:
            if self.connection is None:
                raise kopf.TemporaryError("not logged in yet", delay=1)
            self._kube = Kube.from_connection_info(self.connection)
        return self._kube

    def waker(self, namespace: str, name: str) -> asyncio.Event:
        return self.wakers.setdefault((namespace, name), asyncio.Event())

    def wake(self, namespace: str | None, name: str | None) -> None:
        if namespace and name and (namespace, name) in self.wakers:
            self.wakers[(namespace, name)].set()

    async def close(self) -> None:
        if self._kube is not None:
            await self._kube.close()


STATE = OperatorState()
_MEMBER_LABELS = {LABEL_MANAGED_BY: MANAGED_BY}


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    # The `kubernetes` package's loaders (in-cluster service account, else the kubeconfig with
    # exec/auth-provider plugins, e.g. cloud logins); kopf's own readers only if it is missing.
    info = (
        kopf.login_via_client(**kwargs)
        or kopf.login_with_service_account(**kwargs)
        or kopf.login_with_kubeconfig(**kwargs)
    )
    STATE.connection = info
    return info


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.posting.level = logging.WARNING  # the operator posts its own, meaningful events
    settings.persistence.finalizer = "etcdstore.io/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kopf.etcdstore.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="kopf.etcdstore.io")
    settings.watching.server_timeout = int(os.environ.get("ETCDOPERATOR_WATCH_TIMEOUT", "300"))
    settings.watching.reconnect_backoff = 1.0


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    for t in STATE.tasks:
        t.cancel()
    await STATE.close()


@kopf.daemon(crd.GROUP, crd.VERSION, crd.CLUSTER_PLURAL, cancellation_timeout=30.0)
async def reconcile_loop(
    body: kopf.Body, name: str, namespace: str, uid: str, stopped: kopf.DaemonStopped, **_: Any
) -> None:
    """Observe -> plan -> one action -> status, forever; quicker while something is changing."""
    ref = ClusterRef(namespace=namespace, name=name, uid=uid)
    rec = ClusterReconciler(STATE.kube(), STATE.settings, ref)
    wake = STATE.waker(namespace, name)
    try:
        while not stopped:
            wake.clear()
            if body.metadata.get("deletionTimestamp"):
                break
            try:
                result = await rec.step(copy.deepcopy(dict(body)))
                delay = (
                    STATE.busy_interval
                    if result.busy
                    else STATE.error_interval
                    if result.error
                    else STATE.idle_interval
                )
            except Exception:
                log.exception("[%s/%s] reconcile step crashed", namespace, name)
                delay = STATE.error_interval
            waiter = asyncio.ensure_future(wake.wait())
            stopper = asyncio.ensure_future(stopped.wait())
            try:
                await asyncio.wait({waiter, stopper}, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
                stopper.cancel()
    finally:
        await rec.close()
        STATE.wakers.pop((namespace, name), None)


_SEEN_GENERATION: dict[tuple[str, str], tuple[Any, Any]] = {}


@kopf.on.event(crd.GROUP, crd.VERSION, crd.CLUSTER_PLURAL)
def cluster_changed(name: str, namespace: str, meta: kopf.Meta, **_: Any) -> None:
    """Wake the loop on spec changes and deletion, not on its own status writes (no feedback loop)."""
    seen = (meta.get("generation"), meta.get("deletionTimestamp"))
    if _SEEN_GENERATION.get((namespace, name)) != seen:
        _SEEN_GENERATION[(namespace, name)] = seen
        STATE.wake(namespace, name)


# Member pods and StatefulSets wake their cluster's loop. They are watched with a label selector
# the API server applies (kopf filters `labels=` on the client: every pod in the cluster would
# reach the operator); one watch per resource per served namespace (all: one cluster-wide).
WATCHED = ((PODS, {**_MEMBER_LABELS, LABEL_COMPONENT: "member"}), (STATEFULSETS, _MEMBER_LABELS))


async def watch_members(res: Any, namespace: str | None, labels: dict[str, str]) -> None:
    while True:
        try:
            kube = STATE.kube()
        except kopf.TemporaryError:  # not logged in yet
            await asyncio.sleep(1.0)
            continue
        try:
            async for event in kube.watch(res, namespace, labels=labels):
                meta = (event.get("object") or {}).get("metadata") or {}
                STATE.wake(meta.get("namespace"), (meta.get("labels") or {}).get(LABEL_INSTANCE))
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001  (reconnect on anything; the loops also poll)
            log.warning(
                "watch of %s%s failed, restarting: %s", res.plural, f" in {namespace}" if namespace else "", e
            )
            await asyncio.sleep(2.0)


@kopf.on.startup()
async def start_watches(**_: Any) -> None:
    for res, labels in WATCHED:
        for ns in STATE.namespaces or [None]:
            STATE.tasks.append(
                asyncio.create_task(watch_members(res, ns, labels), name=f"watch {res.plural} {ns}")
            )


@kopf.on.delete(crd.GROUP, crd.VERSION, crd.CLUSTER_PLURAL)
async def cluster_deleted(
    body: kopf.Body, spec: kopf.Spec, name: str, namespace: str, uid: str, **_: Any
) -> None:
    """Finalizer: member volumes are not owned by the EtcdCluster (StatefulSets never delete their
    claims on most clusters), so they are deleted here when reclaimPolicy is Delete."""
    ref = ClusterRef(namespace=namespace, name=name, uid=uid)
    s = parse_cluster_spec(dict(spec))
    kube = STATE.kube()
    if s.storage.ephemeral or s.storage.reclaim_policy != "Delete":
        await events.post(
            kube, body, "Deleted", "cluster deleted; member volumes kept (reclaimPolicy Retain)"
        )
        return
    claims = await kube.list(PVCS, namespace, labels=ref.member_selector())
    for c in claims:
        await kube.delete(PVCS, namespace, c["metadata"]["name"])
    await events.post(kube, body, "Deleted", f"cluster deleted with its {len(claims)} member volumes")


backups.register(STATE)
