"""kube-apiserver on etcdstore, side by side with real etcd 3.4 (issue 13 item 5).

    python -m localkube.compat                       # full: etcd x1, etcdstore x1, etcd x3, etcdstore x3
    python -m localkube.compat --short               # etcd x1, etcdstore x1, 100 objects, 60 s lease hold
    python -m localkube.compat --backends etcd:1,etcdstore:3 --objects 500 --lease-hold 300

Every backend gets its own control plane (same flags; `--etcd-compaction-interval` short, the watch
cache off for podtemplates so compaction is seen through the apiserver, not hidden by the cache) and
runs the same script. Each step's result is normalised (names, uids, resourceVersions, timestamps
and ports removed) so equal behaviour prints equal; what is not compared goes to the `--details`
output. One table: operation, the result per backend with its time, and whether all agree.
"""

from __future__ import annotations

import argparse
import json
import queue
import re
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from .controlplane import ControlPlane
from .stores import etcdctl_path

KNOWN_WATCH_CACHE_OFF = "podtemplates#0"


@dataclass
class Outcome:
    value: str
    seconds: float
    detail: str = ""


@dataclass
class Options:
    objects: int = 500
    chunk: int = 50
    lease_hold: float = 60.0
    compaction_interval: str = "10s"
    kill_window: float = 20.0


_NORMALISERS = [
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"), "<uid>"),
    (re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z"), "<time>"),
    (re.compile(r"127\.0\.0\.1:\d+"), "127.0.0.1:<port>"),
    (re.compile(r"(resource ?version|resourceVersion|revision)([\s\":=]*)\d+", re.IGNORECASE), r"\1\2<rv>"),
    (re.compile(r"\(\d+\)"), "(<rv>)"),
    (re.compile(r"\b\d+(\.\d+)?(ms|s)\b"), "<dur>"),
]


def normalise(text: str) -> str:
    for rx, repl in _NORMALISERS:
        text = rx.sub(repl, text)
    return " ".join(text.split())


class Failed(Exception):
    pass


class Script:
    """The compatibility script, run against one control plane."""

    def __init__(self, cp: ControlPlane, opts: Options, log: Callable[[str], None]) -> None:
        self.cp = cp
        self.opts = opts
        self.log = log
        self.results: dict[str, Outcome] = {}
        self._lease_samples: list[tuple[float, str, dict | None]] = []
        self._lease_stop = threading.Event()
        self._lease_thread: threading.Thread | None = None
        self.started = time.monotonic()

    # --- helpers ---------------------------------------------------------------------------------
    def k(self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120):
        return self.cp.kubectl(*args, input=input, check=check, timeout=timeout)

    def kjson(self, *args: str) -> dict:
        return json.loads(self.k(*args, "-o", "json").stdout)

    def raw(self, path: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        return self.k("get", "--raw", path, check=check, timeout=timeout)

    def ns(self, name: str) -> str:
        self.k("create", "namespace", name)
        return name

    def wait(self, what: str, cond: Callable[[], bool], timeout: float = 90.0, every: float = 0.5) -> float:
        t0 = time.monotonic()
        while not cond():
            if time.monotonic() - t0 > timeout:
                raise Failed(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(every)
        return time.monotonic() - t0

    def count(self, kind: str, ns: str, selector: str | None = None) -> int:
        args = ["get", kind, "-n", ns, "-o", "name"]
        if selector:
            args += ["-l", selector]
        return len([x for x in self.k(*args).stdout.splitlines() if x.strip()])

    def run(self, name: str, fn: Callable[[], tuple[str, str] | str]) -> Outcome:
        self.log(f"  {name} ...")
        t0 = time.monotonic()
        try:
            res = fn()
            value, detail = (res, "") if isinstance(res, str) else res
        except subprocess.CalledProcessError as e:
            value, detail = (
                f"FAILED: {normalise((e.stderr or e.stdout or str(e)).strip()[-300:])}",
                (e.stderr or "")[-2000:],
            )
        except Exception as e:  # noqa: BLE001 - a failed step is a result, and the next steps still run
            value, detail = f"FAILED: {normalise(str(e))[:300]}", traceback.format_exc()[-2000:]
        out = Outcome(value, time.monotonic() - t0, detail)
        self.results[name] = out
        self.log(f"  {name}: {value} ({out.seconds:.1f} s)")
        return out

    # --- lease monitor ---------------------------------------------------------------------------
    def start_lease_monitor(self) -> None:
        def loop() -> None:
            while not self._lease_stop.wait(2.0):
                for name in ("kube-controller-manager", "kube-scheduler"):
                    try:
                        lease = self.cp.lease(name)
                    except Exception:  # noqa: BLE001 - no Lease yet, or not readable: reported as none
                        lease = None
                    self._lease_samples.append((time.monotonic(), name, lease))

        self._lease_thread = threading.Thread(target=loop, daemon=True)
        self._lease_thread.start()

    # --- the steps -------------------------------------------------------------------------------
    def step_health(self) -> tuple[str, str]:
        ready = self.raw("/readyz?verbose").stdout
        live = self.raw("/livez?verbose").stdout
        etcd_ready = [ln.strip() for ln in ready.splitlines() if "etcd" in ln]
        etcd_live = [ln.strip() for ln in live.splitlines() if "etcd" in ln]
        single = self.raw("/readyz/etcd").stdout.strip()
        return (
            f"readyz: {', '.join(etcd_ready)}; livez: {', '.join(etcd_live)}; /readyz/etcd: {single}",
            ready + live,
        )

    def step_storage_features(self) -> tuple[str, str]:
        log = (self.cp.logs / "kube-apiserver.log").read_text(errors="replace")
        unsupported = "RequestWatchProgress feature is not supported" in log
        metrics = self.raw("/metrics").stdout
        size = [ln for ln in metrics.splitlines() if ln.startswith("apiserver_storage_size_bytes")]
        # A watch-list (streaming list) request needs RequestWatchProgress from etcd.
        ns = self.ns("compat-features")
        wl = self.raw(
            f"/api/v1/namespaces/{ns}/configmaps?watch=1&sendInitialEvents=true"
            "&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&timeoutSeconds=5",
            check=False,
        )
        first = (wl.stdout.strip().splitlines() or [wl.stderr.strip()])[0]
        try:
            ev = json.loads(first)
            wl_result = f"{ev['type']} {ev['object'].get('code', '')} {ev['object'].get('message', '')}"
        except (ValueError, KeyError, TypeError):
            wl_result = first
        value = (
            f"RequestWatchProgress {'unsupported' if unsupported else 'supported'}; "
            f"apiserver_storage_size_bytes {'reported' if size else 'absent'}; "
            f"watch-list: {normalise(wl_result)}"
        )
        return value, "\n".join(size)

    def step_create_many(self) -> tuple[str, str]:
        ns = self.ns("compat-list")
        n = self.opts.objects
        items = [
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": f"cm-{i:05d}", "labels": {"compat": "list", "parity": str(i % 2)}},
                "data": {"i": str(i), "blob": "x" * 512},
            }
            for i in range(n)
        ]
        out = self.k(
            "create",
            "-n",
            ns,
            "-f",
            "-",
            input=yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": items}),
            timeout=600,
        )
        created = sum(1 for ln in out.stdout.splitlines() if ln.endswith(" created"))
        return f"{created} created", ""

    def step_list_chunked(self) -> tuple[str, str]:
        ns = "compat-list"
        r = self.k("get", "configmaps", "-n", ns, f"--chunk-size={self.opts.chunk}", "-o", "name", "-v=6")
        names = [x for x in r.stdout.splitlines() if x.strip()]
        pages = len(re.findall(r'"Response" verb="GET" url="[^"]*/configmaps\?[^"]*limit=', r.stderr))
        sel = self.k(
            "get", "configmaps", "-n", ns, f"--chunk-size={self.opts.chunk}", "-l", "parity=1", "-o", "name"
        )
        odd = len(sel.stdout.split())
        return f"{len(names)} items in {pages} requests; label selector parity=1: {odd}", ""

    def step_list_raw_pages(self) -> tuple[str, str]:
        ns = "compat-list"
        limit = max(1, self.opts.objects // 5)
        base = f"/api/v1/namespaces/{ns}/configmaps?limit={limit}"
        page = json.loads(self.raw(base).stdout)
        first_remaining = page["metadata"].get("remainingItemCount")
        rv0 = page["metadata"]["resourceVersion"]
        total, pages, rvs = len(page["items"]), 1, {rv0}
        while page["metadata"].get("continue"):
            page = json.loads(self.raw(f"{base}&continue={page['metadata']['continue']}").stdout)
            total += len(page["items"])
            pages += 1
            rvs.add(page["metadata"]["resourceVersion"])
        # The same list from the watch cache (resourceVersion=0) and at an exact resourceVersion.
        cached = json.loads(
            self.raw(f"/api/v1/namespaces/{ns}/configmaps?resourceVersion=0&limit={limit}").stdout
        )
        exact = json.loads(
            self.raw(
                f"/api/v1/namespaces/{ns}/configmaps?resourceVersion={rv0}"
                f"&resourceVersionMatch=Exact&limit={limit}"
            ).stdout
        )
        value = (
            f"limit={limit}: {pages} pages, {total} items, first remainingItemCount={first_remaining}, "
            f"one list RV for all pages: {len(rvs) == 1}; RV=0: {len(cached['items'])} items "
            f"continue={'yes' if cached['metadata'].get('continue') else 'no'}; Exact RV: "
            f"{len(exact['items'])} items continue={'yes' if exact['metadata'].get('continue') else 'no'}"
        )
        return value, ""

    def _watch_lines(self, argv: list[str]) -> tuple[subprocess.Popen, queue.Queue[str]]:
        p = subprocess.Popen(
            [self.cp.binary("kubectl"), f"--kubeconfig={self.cp.kubeconfig}", *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        q: queue.Queue[str] = queue.Queue()

        def pump() -> None:
            assert p.stdout is not None
            for line in p.stdout:
                q.put(line.rstrip("\n"))

        threading.Thread(target=pump, daemon=True).start()
        return p, q

    @staticmethod
    def _next(q: queue.Queue[str], timeout: float = 30.0) -> str:
        try:
            return q.get(timeout=timeout)
        except queue.Empty:
            raise Failed("no watch event within 30 s") from None

    def step_watch(self) -> tuple[str, str]:
        ns = self.ns("compat-watch")
        self.k("create", "configmap", "w1", "-n", ns, "--from-literal=a=1")
        # kubectl -w lists first (ADDED for w1), then watches from the list's resourceVersion: no race.
        p, q = self._watch_lines(
            [
                "get",
                "configmap",
                "-n",
                ns,
                "-w",
                "--output-watch-events",
                "--field-selector=metadata.name!=kube-root-ca.crt",
                "-o",
                'jsonpath={.type} {.object.metadata.name} {.object.data}{"\\n"}',
            ]
        )
        events = []
        try:
            events.append(self._next(q))
            self.k("patch", "configmap", "w1", "-n", ns, "--type=merge", "-p", '{"data":{"a":"2"}}')
            events.append(self._next(q))
            self.k("create", "configmap", "w2", "-n", ns, "--from-literal=b=1")
            events.append(self._next(q))
            self.k("delete", "configmap", "w1", "-n", ns)
            events.append(self._next(q))
        finally:
            p.kill()
            p.wait()
        # A raw watch from an older resourceVersion replays what happened since (from the watch cache).
        rv = self.kjson("get", "configmap", "w2", "-n", ns)["metadata"]["resourceVersion"]
        self.k("label", "configmap", "w2", "-n", ns, "x=y")
        self.k("delete", "configmap", "w2", "-n", ns)
        raw = self.raw(f"/api/v1/namespaces/{ns}/configmaps?watch=1&resourceVersion={rv}&timeoutSeconds=3")
        replay = [json.loads(ln)["type"] for ln in raw.stdout.splitlines() if ln.strip()]
        return f"kubectl -w: {' | '.join(events)}; watch from RV: {' '.join(replay)}", ""

    def step_apply_client(self) -> tuple[str, str]:
        ns = self.ns("compat-apply")
        m1 = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "ca", "namespace": ns},
            "data": {"a": "1", "b": "2"},
        }
        out = [self.k("apply", "-f", "-", input=yaml.safe_dump(m1)).stdout.strip()]
        out.append(self.k("apply", "-f", "-", input=yaml.safe_dump(m1)).stdout.strip())
        m2 = {**m1, "data": {"a": "1", "c": "3"}}
        out.append(self.k("apply", "-f", "-", input=yaml.safe_dump(m2)).stdout.strip())
        obj = self.kjson("get", "configmap", "ca", "-n", ns)
        has_last = "kubectl.kubernetes.io/last-applied-configuration" in obj["metadata"].get(
            "annotations", {}
        )
        return (
            f"{' / '.join(out)}; data={json.dumps(obj['data'], sort_keys=True)}; last-applied={has_last}",
            "",
        )

    def step_apply_server(self) -> tuple[str, str]:
        ns = self.ns("compat-ssa")
        m = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "sa", "namespace": ns},
            "data": {"owner": "one"},
        }
        out = [
            self.k(
                "apply", "--server-side", "--field-manager=one", "-f", "-", input=yaml.safe_dump(m)
            ).stdout.strip()
        ]
        m2 = {**m, "data": {"owner": "two"}}
        conflict = self.k(
            "apply", "--server-side", "--field-manager=two", "-f", "-", input=yaml.safe_dump(m2), check=False
        )
        out.append(
            "conflict"
            if conflict.returncode and "conflict" in conflict.stderr.lower()
            else f"no conflict ({conflict.returncode})"
        )
        out.append(
            self.k(
                "apply",
                "--server-side",
                "--field-manager=two",
                "--force-conflicts",
                "-f",
                "-",
                input=yaml.safe_dump(m2),
            ).stdout.strip()
        )
        obj = self.kjson("get", "configmap", "sa", "-n", ns, "--show-managed-fields")
        managers = sorted(f"{f['manager']}:{f['operation']}" for f in obj["metadata"]["managedFields"])
        # Apply of an unchanged object is a no-op: the resourceVersion must not move.
        rv1 = obj["metadata"]["resourceVersion"]
        self.k("apply", "--server-side", "--field-manager=two", "-f", "-", input=yaml.safe_dump(m2))
        rv2 = self.kjson("get", "configmap", "sa", "-n", ns)["metadata"]["resourceVersion"]
        value = (
            f"{' / '.join(out)}; data={obj['data']}; managers={managers}; no-op apply keeps RV: {rv1 == rv2}"
        )
        return value, ""

    def _deployment(self, ns: str, name: str, replicas: int = 3) -> None:
        d = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {"containers": [{"name": "c", "image": "registry.invalid/none:1"}]},
                },
            },
        }
        self.k("apply", "-f", "-", input=yaml.safe_dump(d))
        self.wait(f"{replicas} pods of {name}", lambda: self.count("pods", ns, f"app={name}") == replicas)

    def _delete_deployment(self, cascade: str) -> tuple[str, str]:
        ns = self.ns(f"compat-gc-{cascade}")
        self._deployment(ns, "d")
        rs_before = self.count("replicasets", ns, "app=d")
        t0 = time.monotonic()
        self.k("delete", "deployment", "d", "-n", ns, f"--cascade={cascade}", "--wait=true", "--timeout=90s")
        gone = time.monotonic() - t0
        if cascade == "orphan":
            # Wait for the garbage collector to take the owner references off the ReplicaSet.
            def orphaned() -> bool:
                rs = self.kjson("get", "replicasets", "-n", ns, "-l", "app=d")["items"]
                return bool(rs) and not any(r["metadata"].get("ownerReferences") for r in rs)

            self.wait("orphaned ReplicaSet", orphaned)
        else:
            self.wait(
                "ReplicaSets and pods collected",
                lambda: self.count("replicasets", ns, "app=d") + self.count("pods", ns, "app=d") == 0,
            )
        rs, pods = self.count("replicasets", ns, "app=d"), self.count("pods", ns, "app=d")
        pods_owned = ""
        if cascade == "orphan":
            pods_owned = f", pods still owned by the RS: {pods}"
        return (
            f"deployment deleted, rs before {rs_before}, after: rs {rs}, pods {pods}{pods_owned}",
            f"delete returned after {gone:.1f} s",
        )

    def step_gc_foreground(self) -> tuple[str, str]:
        return self._delete_deployment("foreground")

    def step_gc_background(self) -> tuple[str, str]:
        return self._delete_deployment("background")

    def step_gc_orphan(self) -> tuple[str, str]:
        return self._delete_deployment("orphan")

    def step_owner_refs(self) -> tuple[str, str]:
        ns = self.ns("compat-owner")
        self.k("create", "configmap", "owner", "-n", ns, "--from-literal=a=1")
        uid = self.kjson("get", "configmap", "owner", "-n", ns)["metadata"]["uid"]
        for i in range(3):
            dep = {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": f"dep-{i}",
                    "namespace": ns,
                    "ownerReferences": [
                        {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}
                    ],
                },
            }
            self.k("create", "-f", "-", input=yaml.safe_dump(dep))
        # A dependent whose owner does not exist is collected too.
        dangling = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": "dangling",
                "namespace": ns,
                "ownerReferences": [
                    {
                        "apiVersion": "v1",
                        "kind": "ConfigMap",
                        "name": "ghost",
                        "uid": "00000000-0000-0000-0000-000000000001",
                    }
                ],
            },
        }
        self.k("create", "-f", "-", input=yaml.safe_dump(dangling))
        self.k("delete", "configmap", "owner", "-n", ns, "--cascade=foreground", "--timeout=90s")
        self.wait("dependents collected", lambda: self.count("configmaps", ns) == 1)  # kube-root-ca.crt
        return f"owner deleted (foreground), dependents left: {self.count('configmaps', ns) - 1}", ""

    CRD: ClassVar[dict[str, Any]] = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.compat.example.com"},
        "spec": {
            "group": "compat.example.com",
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "x-kubernetes-validations": [
                                        {
                                            "rule": "self.replicas <= self.maxReplicas",
                                            "message": "replicas must not exceed maxReplicas",
                                        }
                                    ],
                                    "properties": {
                                        "replicas": {"type": "integer", "minimum": 0},
                                        "maxReplicas": {"type": "integer"},
                                    },
                                },
                                "status": {"type": "object", "properties": {"ready": {"type": "integer"}}},
                            },
                        }
                    },
                }
            ],
        },
    }

    def step_crd(self) -> tuple[str, str]:
        ns = self.ns("compat-crd")
        self.k("apply", "-f", "-", input=yaml.safe_dump(self.CRD))
        self.k("wait", "--for=condition=Established", "crd/widgets.compat.example.com", "--timeout=60s")
        out = []

        def cr(name: str, replicas: int, mx: int) -> str:
            return yaml.safe_dump(
                {
                    "apiVersion": "compat.example.com/v1",
                    "kind": "Widget",
                    "metadata": {"name": name, "namespace": ns},
                    "spec": {"replicas": replicas, "maxReplicas": mx},
                }
            )

        # The CRD's REST endpoint appears a moment after Established in discovery: retry the first create.
        deadline = time.monotonic() + 30
        while True:
            r = self.k("create", "-f", "-", input=cr("w1", 1, 3), check=False)
            if r.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        out.append("create ok" if r.returncode == 0 else f"create failed: {normalise(r.stderr)}")
        bad = self.k("create", "-f", "-", input=cr("w2", 5, 3), check=False)
        out.append(
            "CEL rejects"
            if bad.returncode and "replicas must not exceed maxReplicas" in bad.stderr
            else f"CEL did not reject: {normalise(bad.stdout + bad.stderr)}"
        )
        self.k("patch", "widget", "w1", "-n", ns, "--type=merge", "-p", '{"spec":{"replicas":2}}')
        self.k(
            "patch",
            "widget",
            "w1",
            "-n",
            ns,
            "--subresource=status",
            "--type=merge",
            "-p",
            '{"status":{"ready":2}}',
        )
        obj = self.kjson("get", "widget", "w1", "-n", ns)
        out.append(
            f"spec={obj['spec']} status={obj.get('status')} generation={obj['metadata']['generation']}"
        )
        bad_patch = self.k(
            "patch", "widget", "w1", "-n", ns, "--type=merge", "-p", '{"spec":{"replicas":9}}', check=False
        )
        out.append("CEL rejects update" if bad_patch.returncode else "CEL accepted a bad update")
        for i in range(3, 8):
            self.k("create", "-f", "-", input=cr(f"w{i}", 0, 1))
        out.append(f"list {self.count('widgets', ns)}")
        self.k("delete", "widget", "w3", "-n", ns)
        out.append(f"after delete {self.count('widgets', ns)}")
        self.k("delete", "crd", "widgets.compat.example.com", "--timeout=90s")
        gone = self.k("get", "widgets", "-n", ns, check=False)
        out.append("CRD deleted, widgets API gone" if gone.returncode else "widgets still served")
        return "; ".join(out), ""

    def _compact_rev(self) -> int:
        r = subprocess.run(
            [
                etcdctl_path(),
                "--endpoints",
                ",".join(self.cp.store.endpoints),
                "get",
                "compact_rev_key",
                "--print-value-only",
            ],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        try:
            return int(r.stdout.strip() or 0)
        except ValueError:
            return 0

    def step_compaction(self) -> tuple[str, str]:
        ns = self.ns("compat-compact")
        tpl = lambda n: yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "PodTemplate",
                "metadata": {"name": n, "namespace": ns},
                "template": {"spec": {"containers": [{"name": "c", "image": "x"}]}},
            }
        )
        for n in ("pt-a", "pt-b", "pt-c"):
            self.k("create", "-f", "-", input=tpl(n))
        page = json.loads(self.raw(f"/api/v1/namespaces/{ns}/podtemplates?limit=1").stdout)
        rv_old = int(page["metadata"]["resourceVersion"])
        cont = page["metadata"]["continue"]
        for i in range(3):
            self.k("label", "podtemplate", "pt-a", "-n", ns, f"round={i}", "--overwrite")
        waited = self.wait(
            "the apiserver's compactor to pass the old revision",
            lambda: self._compact_rev() > rv_old,
            timeout=180,
            every=1.0,
        )
        out = []
        exact = self.raw(
            f"/api/v1/namespaces/{ns}/podtemplates?resourceVersion={rv_old}&resourceVersionMatch=Exact",
            check=False,
        )
        out.append(f"exact-RV list: {self._err(exact)}")
        cont_r = self.raw(f"/api/v1/namespaces/{ns}/podtemplates?limit=1&continue={cont}", check=False)
        out.append(f"continue: {self._err(cont_r)}")
        w = self.raw(
            f"/api/v1/namespaces/{ns}/podtemplates?watch=1&resourceVersion={rv_old}&timeoutSeconds=5",
            check=False,
        )
        out.append(f"watch (no cache): {self._watch_err(w)}")
        # Through the watch cache (configmaps) the same compacted resourceVersion is still served: the
        # cache keeps its own window of events, independent of etcd's compaction.
        wc = self.raw(
            f"/api/v1/namespaces/{ns}/configmaps?watch=1&resourceVersion={rv_old}&timeoutSeconds=5",
            check=False,
        )
        out.append(f"watch (cache): {self._watch_err(wc)}")
        direct = subprocess.run(
            [
                etcdctl_path(),
                "--endpoints",
                ",".join(self.cp.store.endpoints),
                "get",
                f"--rev={rv_old}",
                f"/registry/podtemplates/{ns}/pt-a",
            ],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        last = ((direct.stderr or direct.stdout).strip().splitlines() or [""])[-1]
        out.append(f"etcdctl get --rev: {normalise(last)}")
        return "; ".join(out), f"compaction passed the old RV after {waited:.1f} s"

    @staticmethod
    def _err(r: subprocess.CompletedProcess) -> str:
        if r.returncode == 0:
            return "ok (no error)"
        m = re.search(r"Error from server \((\w+)\): (.*)", r.stderr)
        return normalise(f"{m.group(1)}: {m.group(2)}" if m else r.stderr.strip()[-200:])

    @staticmethod
    def _watch_err(r: subprocess.CompletedProcess) -> str:
        events = [json.loads(ln) for ln in r.stdout.splitlines() if ln.strip().startswith("{")]
        errs = [e for e in events if e.get("type") == "ERROR"]
        if errs:
            o = errs[0]["object"]
            return normalise(f"ERROR {o.get('code')} {o.get('reason')}: {o.get('message')}")
        return f"{len(events)} events, no error" + (
            f" ({normalise(r.stderr.strip()[-150:])})" if r.returncode else ""
        )

    def step_kill_leader(self) -> tuple[str, str]:
        store = self.cp.store
        assert store is not None
        if len(store.members) < 3:
            return "n/a (1 member)", ""
        ns = self.ns("compat-kill")
        leader = store.leader_index()
        if leader is None:
            raise Failed("no leader found")
        stop = threading.Event()
        stats = {
            "writes": 0,
            "landed": 0,
            "failed_attempts": 0,
            "reads": 0,
            "failed_reads": 0,
            "max_stall": 0.0,
            "errors": set(),
        }

        def writer() -> None:
            i = 0
            while not stop.is_set():
                name = f"k-{i:04d}"
                t0 = time.monotonic()
                stats["writes"] += 1
                while True:
                    r = self.k(
                        "create",
                        "configmap",
                        name,
                        "-n",
                        ns,
                        "--from-literal=i=1",
                        "--request-timeout=10s",
                        check=False,
                        timeout=30,
                    )
                    if r.returncode == 0 or "AlreadyExists" in r.stderr:
                        stats["landed"] += 1
                        break
                    stats["failed_attempts"] += 1
                    stats["errors"].add(normalise(r.stderr.strip()[-160:]))
                    if time.monotonic() - t0 > 60:
                        break
                    time.sleep(0.2)
                stats["max_stall"] = max(stats["max_stall"], time.monotonic() - t0)
                r = self.k(
                    "get",
                    "configmaps",
                    "-n",
                    ns,
                    "-o",
                    "name",
                    "--request-timeout=10s",
                    check=False,
                    timeout=30,
                )
                stats["reads"] += 1
                if r.returncode:
                    stats["failed_reads"] += 1
                    stats["errors"].add(normalise(r.stderr.strip()[-160:]))
                i += 1

        t = threading.Thread(target=writer, daemon=True)
        t.start()
        time.sleep(3)
        killed_at = time.monotonic()
        store.kill(leader)
        time.sleep(self.opts.kill_window)
        stop.set()
        t.join(120)
        new_leader = store.leader_index()
        store.restart(leader)
        self.wait("killed member healthy", lambda: store.members[leader].healthy(), timeout=60)
        present = self.count("configmaps", ns) - 1
        ok = stats["landed"] == stats["writes"] == present
        value = (
            f"leader killed: {'kubectl kept working' if ok else 'WRITES LOST OR FAILED'} "
            f"(writes landed = attempted = listed: {ok}); new leader elected: {new_leader is not None}; "
            f"old leader rejoined"
        )
        detail = (
            f"writes {stats['writes']} landed {stats['landed']} listed {present}; failed attempts "
            f"{stats['failed_attempts']}; reads {stats['reads']} failed {stats['failed_reads']}; "
            f"longest write incl. retries {stats['max_stall']:.1f} s; "
            f"errors: {sorted(stats['errors'])}; killed {time.monotonic() - killed_at:.0f} s ago"
        )
        return value, detail

    def step_leases(self) -> tuple[str, str]:
        remaining = self.opts.lease_hold - (time.monotonic() - self.started)
        if remaining > 0:
            self.log(f"  holding leases for {remaining:.0f} s more")
            time.sleep(remaining)
        self._lease_stop.set()
        if self._lease_thread:
            self._lease_thread.join(10)
        parts, details = [], []
        for name in ("kube-controller-manager", "kube-scheduler"):
            samples = [(t, lease) for t, n, lease in self._lease_samples if n == name and lease]
            if not samples:
                parts.append(f"{name}: no samples")
                continue
            holders = {lease["spec"].get("holderIdentity") for _, lease in samples}
            trans = [lease["spec"].get("leaseTransitions", 0) for _, lease in samples]
            renewals = len({lease["spec"].get("renewTime") for _, lease in samples})
            span = samples[-1][0] - samples[0][0]
            parts.append(f"{name}: {len(holders)} holder(s), transitions +{trans[-1] - trans[0]}")
            details.append(
                f"{name}: {renewals} distinct renewTimes over {span:.0f} s, {len(samples)} samples"
            )
        procs_ok = self.cp.controller_manager.running and self.cp.scheduler.running
        parts.append(f"both processes running: {procs_ok}")
        return "; ".join(parts), "; ".join(details) + f"; held {time.monotonic() - self.started:.0f} s"

    def step_storage_errors(self) -> tuple[str, str]:
        """Storage-layer errors the apiserver logged (not compared for equality of counts)."""
        log = (self.cp.logs / "kube-apiserver.log").read_text(errors="replace")
        kinds: dict[str, int] = {}
        for ln in log.splitlines():
            if not ln.startswith("E"):
                continue
            m = re.search(r"(etcdserver: [^\"\\,]+|mvcc: [^\"\\,]+|rpc error: code = \w+)", ln)
            if m:
                key = normalise(m.group(1))
                kinds[key] = kinds.get(key, 0) + 1
        value = ", ".join(sorted(kinds)) or "none"
        return value, json.dumps(kinds)

    def step_cache_consistency(self) -> tuple[str, str]:
        """kube-apiserver 1.34 compares each watch cache with etcd every 5-7.5 min (DetectCacheInconsistency,
        beta, on): a digest of the cache's objects against an exact-resourceVersion list from etcd."""
        counts: dict[str, int] = {}
        for ln in self.raw("/metrics").stdout.splitlines():
            if ln.startswith("apiserver_storage_consistency_checks_total{"):
                status = re.search(r'status="(\w+)"', ln).group(1)
                counts[status] = counts.get(status, 0) + int(float(ln.rsplit(" ", 1)[1]))
        value = f"checks ran: {sum(counts.values()) > 0}; failures: {counts.get('failure', 0)}"
        return value, json.dumps(counts)

    def step_storage_operations(self) -> tuple[str, str]:
        """The kinds of storage calls kube-apiserver made (its etcd_request_duration_seconds metric)."""
        ops: dict[str, int] = {}
        for ln in self.raw("/metrics").stdout.splitlines():
            if ln.startswith("etcd_request_duration_seconds_count{"):
                op = re.search(r'operation="(\w+)"', ln).group(1)
                ops[op] = ops.get(op, 0) + int(float(ln.rsplit(" ", 1)[1]))
        return f"operations: {', '.join(sorted(o for o, n in ops.items() if n))}", json.dumps(ops)

    def step_grpc_methods(self) -> tuple[str, str]:
        """The gRPC methods the store's members served (their grpc_server_started_total counters):
        what kube-apiserver (plus this script's few etcdctl calls) asked of the store."""
        import urllib.request

        calls: dict[str, int] = {}
        for m in self.cp.store.members:
            if not m.proc.running:
                continue
            with urllib.request.urlopen(m.client_url + "/metrics", timeout=10) as r:
                text = r.read().decode()
            for ln in text.splitlines():
                if ln.startswith("grpc_server_started_total{"):
                    method = re.search(r'grpc_method="(\w+)"', ln).group(1)
                    service = re.search(r'grpc_service="([\w.]+)"', ln).group(1)
                    key = f"{service.rsplit('.', 1)[-1]}.{method}"
                    calls[key] = calls.get(key, 0) + int(float(ln.rsplit(" ", 1)[1]))
        return f"methods: {', '.join(sorted(k for k, n in calls.items() if n))}", json.dumps(calls)

    STEPS: ClassVar[list[tuple[str, str]]] = [
        ("readyz/livez etcd checks", "step_health"),
        ("storage features seen by apiserver", "step_storage_features"),
        ("kubectl create N ConfigMaps", "step_create_many"),
        ("kubectl get --chunk-size", "step_list_chunked"),
        ("LIST limit/continue (raw)", "step_list_raw_pages"),
        ("watch (kubectl -w, raw from RV)", "step_watch"),
        ("apply (client side)", "step_apply_client"),
        ("apply --server-side", "step_apply_server"),
        ("delete --cascade=foreground (GC)", "step_gc_foreground"),
        ("delete --cascade=background (GC)", "step_gc_background"),
        ("delete --cascade=orphan (GC)", "step_gc_orphan"),
        ("ownerReferences between ConfigMaps", "step_owner_refs"),
        ("CRD + CEL + CR CRUD", "step_crd"),
        ("compaction: old RV -> 410", "step_compaction"),
        ("kill -9 store leader (3 members)", "step_kill_leader"),
        ("leases held (kcm, scheduler)", "step_leases"),
        ("watch-cache vs store consistency checks", "step_cache_consistency"),
        ("storage operations issued by apiserver", "step_storage_operations"),
        ("gRPC methods served by the store", "step_grpc_methods"),
        ("apiserver storage errors logged", "step_storage_errors"),
    ]

    def run_all(self) -> dict[str, Outcome]:
        self.start_lease_monitor()
        for title, method in self.STEPS:
            self.run(title, getattr(self, method))
        return self.results


@dataclass
class BackendRun:
    label: str
    store: str
    members: int
    startup: float = 0.0
    results: dict[str, Outcome] = field(default_factory=dict)
    error: str = ""


def run_backend(
    store: str, members: int, opts: Options, workroot: Path, log: Callable[[str], None]
) -> BackendRun:
    run = BackendRun(f"{store} x{members}", store, members)
    cp = ControlPlane(
        workroot / f"{store}-{members}",
        store=store,
        members=members,
        compaction_interval=opts.compaction_interval,
        watch_cache_sizes=(KNOWN_WATCH_CACHE_OFF,),
    )
    log(f"== {run.label}: starting the control plane in {cp.workdir}")
    try:
        cp.start()
        run.startup = cp.startup_seconds or 0.0
        log(f"== {run.label}: up in {run.startup:.1f} s {cp.timings}")
        run.results = Script(cp, opts, log).run_all()
    except Exception as e:  # noqa: BLE001 - the run is reported, whatever failed
        run.error = f"{type(e).__name__}: {e}"
        log(f"== {run.label}: {run.error}")
    finally:
        cp.stop()
    return run


def _groups(runs: list[BackendRun]) -> list[list[BackendRun]]:
    """Backends compared with each other: those with the same number of members."""
    by_size: dict[int, list[BackendRun]] = {}
    for r in runs:
        by_size.setdefault(r.members, []).append(r)
    return list(by_size.values())


def _agree(runs: list[BackendRun], step: str) -> bool:
    for group in _groups(runs):
        values = [r.results[step].value if step in r.results else None for r in group]
        if None in values or len(set(values)) != 1:
            return False
    return True


def table(runs: list[BackendRun]) -> str:
    """One row per step; `same`: etcd and etcdstore agree at each cluster size."""
    steps = [t for t, _ in Script.STEPS]
    head = ["operation"] + [r.label for r in runs] + ["same"]
    rows = [
        ["control plane start-up"]
        + [f"{r.startup:.1f} s" if not r.error else f"FAILED: {r.error}" for r in runs]
        + [""]
    ]
    for step in steps:
        cells = []
        for r in runs:
            o = r.results.get(step)
            cells.append("(not run)" if o is None else f"{o.value} [{o.seconds:.1f} s]")
        rows.append([step] + cells + ["yes" if _agree(runs, step) else "NO"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def differences(runs: list[BackendRun]) -> list[str]:
    return [step for step, _ in Script.STEPS if not _agree(runs, step)]


def load(path: Path) -> list[BackendRun]:
    """Runs saved with --json."""
    out = []
    for d in json.loads(path.read_text()):
        store, _, n = d["label"].partition(" x")
        out.append(
            BackendRun(
                d["label"],
                store,
                int(n),
                d["startup"],
                {k: Outcome(**v) for k, v in d["results"].items()},
                d["error"],
            )
        )
    return out


def parse_backends(spec: str) -> list[tuple[str, int]]:
    out = []
    for item in spec.split(","):
        store, _, n = item.strip().partition(":")
        out.append((store, int(n or 1)))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m localkube.compat",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--backends",
        default=None,
        help="comma-separated store:members (default etcd:1,etcdstore:1,etcd:3,etcdstore:3)",
    )
    ap.add_argument(
        "--short",
        action="store_true",
        help="etcd:1,etcdstore:1, 100 objects, 60 s lease hold (what tests/k8s runs)",
    )
    ap.add_argument("--objects", type=int, default=None, help="ConfigMaps to create (default 500)")
    ap.add_argument(
        "--lease-hold",
        type=float,
        default=None,
        help="seconds the leases are watched per backend (default 480: the watch-cache consistency "
        "checker first runs 5-7.5 min after start; --short 60)",
    )
    ap.add_argument("--compaction-interval", default="10s")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None, help="write all results and details here")
    ap.add_argument("--details", action="store_true", help="print each step's details")
    ap.add_argument("--table-from", type=Path, default=None, help="print the table of a --json file and exit")
    args = ap.parse_args(argv)
    if args.table_from:
        runs = load(args.table_from)
        print(table(runs))
        diff = differences(runs)
        if diff:
            print(f"\ndifferent results: {', '.join(diff)}")
        return 1 if diff else 0
    backends = parse_backends(
        args.backends or ("etcd:1,etcdstore:1" if args.short else "etcd:1,etcdstore:1,etcd:3,etcdstore:3")
    )
    opts = Options(
        objects=args.objects or (100 if args.short else 500),
        lease_hold=args.lease_hold if args.lease_hold is not None else (60 if args.short else 480),
        compaction_interval=args.compaction_interval,
    )
    workroot = args.workdir or Path(tempfile.mkdtemp(prefix="localkube-compat-"))
    log = lambda s: print(s, file=sys.stderr, flush=True)
    runs = [run_backend(store, n, opts, workroot, log) for store, n in backends]
    print(table(runs))
    if args.details:
        for r in runs:
            print(f"\n## {r.label}")
            for step, o in r.results.items():
                if o.detail:
                    print(f"- {step}: {o.detail.strip()[:1500]}")
    if args.json:
        args.json.write_text(
            json.dumps(
                [
                    {
                        "label": r.label,
                        "startup": r.startup,
                        "error": r.error,
                        "results": {k: vars(v) for k, v in r.results.items()},
                    }
                    for r in runs
                ],
                indent=2,
            )
        )
    diff = differences(runs)
    failed = [f"{r.label}: {s}" for r in runs for s, o in r.results.items() if o.value.startswith("FAILED")]
    if diff:
        print(f"\ndifferent results: {', '.join(diff)}")
    if failed or any(r.error for r in runs):
        print(f"failed: {failed or [r.error for r in runs if r.error]}")
    return 1 if (diff or failed or any(r.error for r in runs)) else 0


if __name__ == "__main__":
    sys.exit(main())
