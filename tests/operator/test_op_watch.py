"""Issue 14 item 11: member pods and StatefulSets are watched with a server-side label selector,
so pods of no interest never reach the operator (KMock's API server applies labelSelector to
list and watch, as kube-apiserver does; `Kube.watch` itself filters nothing)."""

from __future__ import annotations

import asyncio

import kmock
from etcdoperator import handlers
from etcdoperator.kube import PODS, STATEFULSETS, Kube
from kubeharness.apiserver import ApiServer
from testlib import eventually_async

MEMBER = {
    "app.kubernetes.io/managed-by": "etcd-operator",
    "app.kubernetes.io/component": "member",
    "app.kubernetes.io/instance": "c",
}


def _pod(name: str, labels: dict[str, str]) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "ns", "labels": labels},
        "spec": {"containers": [{"name": "x", "image": "x"}]},
    }


async def test_watch_gets_only_member_pods_from_the_server():
    api = ApiServer()
    async with api, kmock.Server(api) as srv:
        kube = Kube(str(srv.url).rstrip("/"))
        try:
            await kube.create(PODS, "ns", _pod("c-0", MEMBER))
            for i in range(50):
                await kube.create(PODS, "ns", _pod(f"other-{i}", {"app": "unrelated"}))
            seen: list[tuple[str, str]] = []

            async def collect() -> None:
                async for ev in kube.watch(PODS, None, labels=dict(handlers.WATCHED[0][1])):
                    seen.append((ev["type"], ev["object"]["metadata"]["name"]))

            task = asyncio.create_task(collect())
            await eventually_async(
                lambda: ("SYNC", "c-0") in seen, interval=0.02, message="the listed member pod"
            )
            await kube.create(PODS, "ns", _pod("c-1", MEMBER))
            # KMock streams what happens after the watch request arrives (it ignores
            # resourceVersion): keep changing both pods until the member's change shows.
            for i in range(200):
                await kube.patch(PODS, "ns", "other-0", {"metadata": {"annotations": {"n": str(i)}}})
                await kube.patch(PODS, "ns", "c-1", {"metadata": {"annotations": {"n": str(i)}}})
                await asyncio.sleep(0.05)
                if any(name == "c-1" for _, name in seen):
                    break
            task.cancel()
            assert ("SYNC", "c-0") in seen and any(name == "c-1" for _, name in seen), seen
            assert all(name.startswith("c-") for _, name in seen), seen
        finally:
            await kube.close()


def test_watched_selectors():
    (pods, pod_labels), (sts, sts_labels) = handlers.WATCHED
    assert pods is PODS and sts is STATEFULSETS
    assert pod_labels == {
        "app.kubernetes.io/managed-by": "etcd-operator",
        "app.kubernetes.io/component": "member",
    }
    assert sts_labels == {"app.kubernetes.io/managed-by": "etcd-operator"}
