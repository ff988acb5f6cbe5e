"""The harness kubelet: runs each pod's containers as real local processes.

For a pod it: resolves env (values, fieldRef, configMapKeyRef, secretKeyRef) and expands
$(VAR) in command and args as the kubelet does; materializes volumes (a PVC is a directory that
lives as long as the claim object, emptyDir and Secret volumes are per-pod directories); rewrites
what only a cluster could provide - cluster DNS names to the loopback ports of the address book,
0.0.0.0 listeners to the pod's own ports, container paths to the volume directories; runs init
containers to completion, then the containers, restarting them by the pod's restartPolicy with
back-off; probes readiness/liveness (httpGet, tcpSocket) and writes the pod status
(phase, Ready, containerStatuses with restartCount, waiting reasons, termination messages).

Deleting a pod stops its processes with SIGTERM (then SIGKILL after the grace period);
`kill()` sends a signal to a running container (SIGKILL: a crash, the pod stays and restarts).
"""

from __future__ import annotations

import asyncio
import base64
import copy
import datetime as dt
import os
import re
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from kubeharness.addresses import AddressBook

if TYPE_CHECKING:
    from kubeharness.cluster import Harness

PROBE_PERIOD_CAP = 1.0  # probes run at most this far apart (tests want fast convergence)
GRACE_CAP = 5.0
_HOSTPORT = re.compile(r"(?P<host>[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?):(?P<port>\d{1,5})")
_VAR = re.compile(r"\$\((?P<name>[A-Za-z_][A-Za-z0-9_]*)\)")


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class NotReadyYet(Exception):
    """A referenced object (claim, Secret, ConfigMap) is missing: the pod waits, as in Kubernetes."""


def expand(value: str, env: dict[str, str]) -> str:
    return _VAR.sub(lambda m: env.get(m.group("name"), m.group(0)), value)


@dataclass
class ContainerRun:
    spec: dict[str, Any]
    proc: asyncio.subprocess.Process | None = None
    restarts: int = 0
    ready: bool = False
    state: dict[str, Any] = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    started_at: float = 0.0
    log: Path | None = None
    message_file: Path | None = None


class PodRuntime:
    def __init__(self, kubelet: Kubelet, pod: dict[str, Any]) -> None:
        self.kubelet = kubelet
        meta = pod["metadata"]
        self.namespace: str = meta["namespace"]
        self.name: str = meta["name"]
        self.uid: str = meta["uid"]
        self.pod = pod
        self.dir = kubelet.root / "pods" / self.namespace / f"{self.name}-{self.uid[:8]}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.containers: list[ContainerRun] = []
        self.init_statuses: list[dict[str, Any]] = []
        self.phase = "Pending"
        self.reason: str | None = None
        self.stopping = False
        self.task: asyncio.Task[None] | None = None
        self._last_status: dict[str, Any] | None = None
        self._mounts: dict[str, Path] = {}

    # -- environment --------------------------------------------------------------------------
    def _ports(self) -> dict[str, int]:
        ports: dict[str, int] = {}
        for c in self.pod["spec"].get("containers", []):
            for p in c.get("ports") or []:
                ports[p.get("name") or str(p["containerPort"])] = int(p["containerPort"])
        return ports

    def host_port(self, port: int | str) -> int:
        """The loopback port standing for this pod's container port (a number or a port name)."""
        if isinstance(port, str) and not port.isdigit():
            port = self._ports()[port]
        key = self.kubelet.addresses.pod_hostport(
            self.namespace, self.name, self.pod["spec"].get("subdomain"), int(port)
        )
        self.kubelet.addresses.allocate(key)
        hp = self.kubelet.addresses.port_of(key)
        assert hp is not None
        return hp

    def _resolve_env(self, container: dict[str, Any]) -> dict[str, str]:
        api = self.kubelet.harness.api
        env: dict[str, str] = {}
        for e in container.get("env") or []:
            name = e["name"]
            if "value" in e:
                env[name] = expand(str(e["value"]), env)
                continue
            src = e.get("valueFrom") or {}
            if "fieldRef" in src:
                path = src["fieldRef"]["fieldPath"]
                env[name] = {
                    "metadata.name": self.name,
                    "metadata.namespace": self.namespace,
                    "status.podIP": "127.0.0.1",
                    "metadata.uid": self.uid,
                }.get(path, "")
            elif "configMapKeyRef" in src or "secretKeyRef" in src:
                ref = src.get("configMapKeyRef") or src.get("secretKeyRef")
                kind = "v1/configmaps" if "configMapKeyRef" in src else "v1/secrets"
                obj = api.get_object(kind, self.namespace, ref["name"])
                data = (obj or {}).get("data") or {}
                if ref["key"] not in data:
                    if ref.get("optional"):
                        continue
                    raise NotReadyYet(f"{kind} {ref['name']} key {ref['key']} is missing")
                value = data[ref["key"]]
                env[name] = base64.b64decode(value).decode() if kind == "v1/secrets" else value
        return env

    def _volumes(self) -> dict[str, Path]:
        api = self.kubelet.harness.api
        out: dict[str, Path] = {}
        for v in self.pod["spec"].get("volumes") or []:
            name = v["name"]
            if "persistentVolumeClaim" in v:
                claim = api.get_object(
                    "v1/persistentvolumeclaims", self.namespace, v["persistentVolumeClaim"]["claimName"]
                )
                if claim is None or claim["metadata"].get("deletionTimestamp"):
                    raise NotReadyYet(f"claim {v['persistentVolumeClaim']['claimName']} is not bound")
                out[name] = self.kubelet.claim_dir(claim)
            elif "emptyDir" in v:
                d = self.dir / "volumes" / name
                d.mkdir(parents=True, exist_ok=True)
                out[name] = d
            elif "secret" in v or "configMap" in v:
                src = v.get("secret") or v.get("configMap")
                is_secret = "secret" in v
                obj = api.get_object(
                    "v1/secrets" if is_secret else "v1/configmaps",
                    self.namespace,
                    src["secretName"] if is_secret else src["name"],
                )
                if obj is None:
                    raise NotReadyYet(f"volume {name}: object missing")
                d = self.dir / "volumes" / name
                self._materialize(d, obj.get("data") or {}, src.get("items"), decode=is_secret)
                out[name] = d
        return out

    @staticmethod
    def _materialize(
        d: Path, data: dict[str, str], items: list[dict[str, str]] | None, *, decode: bool
    ) -> None:
        d.mkdir(parents=True, exist_ok=True)
        wanted = {i["key"]: i["path"] for i in items} if items else {k: k for k in data}
        for key, rel in wanted.items():
            if key not in data:
                continue
            content = base64.b64decode(data[key]) if decode else data[key].encode()
            path = d / rel
            if path.exists() and path.read_bytes() == content:
                continue
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_bytes(content)
            os.chmod(tmp, 0o600)
            os.replace(tmp, path)

    def refresh_volumes(self) -> None:
        """Like the kubelet's periodic sync of Secret volumes (certificate rotation)."""
        try:
            self._volumes()
        except NotReadyYet:
            pass

    def _translate(self, value: str, mounts: dict[str, Path]) -> str:
        book = self.kubelet.addresses

        def hostport(m: re.Match[str]) -> str:
            host, port = m.group("host"), int(m.group("port"))
            if host == "0.0.0.0":
                return f"127.0.0.1:{self.host_port(port)}"
            target = book.lookup(f"{host}:{port}")
            return target if target is not None else m.group(0)

        value = _HOSTPORT.sub(hostport, value)
        for cpath in sorted(mounts, key=len, reverse=True):
            hpath = str(mounts[cpath])
            value = re.sub(re.escape(cpath) + r"(?=/|$|[\s,;:=])", lambda _m, h=hpath: h, value)
        return value

    def _command(self, container: dict[str, Any], env: dict[str, str], mounts: dict[str, Path]) -> list[str]:
        cmd = [expand(c, env) for c in container.get("command") or []]
        args = [expand(a, env) for a in container.get("args") or []]
        if not cmd:
            raise RuntimeError(f"{self.name}/{container['name']}: the harness needs an explicit command")
        binary = self.kubelet.binaries.get(cmd[0])
        if binary is None:
            raise RuntimeError(
                f"{self.name}: no binary for command {cmd[0]!r} (known: {sorted(self.kubelet.binaries)})"
            )
        return binary + [self._translate(x, mounts) for x in cmd[1:] + args]

    def _container_mounts(self, container: dict[str, Any], volumes: dict[str, Path]) -> dict[str, Path]:
        mounts = {m["mountPath"]: volumes[m["name"]] for m in container.get("volumeMounts") or []}
        tpath = container.get("terminationMessagePath") or "/dev/termination-log"
        mounts[tpath] = self.dir / f"termination-{container['name']}"
        return mounts

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=f"pod {self.namespace}/{self.name}")

    async def _run(self) -> None:
        try:
            while True:  # wait for claims/Secrets/ConfigMaps like a real kubelet
                try:
                    volumes = self._volumes()
                    for c in (self.pod["spec"].get("initContainers") or []) + self.pod["spec"]["containers"]:
                        self._resolve_env(c)
                    break
                except NotReadyYet as e:
                    self.reason = str(e)
                    await self.push_status()
                    await asyncio.sleep(0.3)
            self.reason = None
            policy = self.pod["spec"].get("restartPolicy", "Always")
            for init in self.pod["spec"].get("initContainers") or []:
                attempt = 0
                while True:
                    run = ContainerRun(init)
                    self.init_statuses = [s for s in self.init_statuses if s["name"] != init["name"]]
                    self.init_statuses.append(
                        {
                            "name": init["name"],
                            "ready": False,
                            "restartCount": attempt,
                            "state": {"running": {"startedAt": now_iso()}},
                            "image": init.get("image", ""),
                        }
                    )
                    await self.push_status()
                    code = await self._run_to_end(run, volumes)
                    self.init_statuses[-1]["state"] = {
                        "terminated": {"exitCode": code, "reason": "Completed" if code == 0 else "Error"}
                    }
                    if code == 0:
                        self.init_statuses[-1]["ready"] = True
                        break
                    if policy == "Never":
                        self.phase = "Failed"
                        await self.push_status()
                        return
                    attempt += 1
                    await asyncio.sleep(min(0.5 * 2**attempt, 5.0))
            self.phase = "Running"
            self.containers = [ContainerRun(c) for c in self.pod["spec"]["containers"]]
            await asyncio.gather(*(self._supervise(c, volumes, policy) for c in self.containers))
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001  (a harness bug must be visible, not a silently dead pod)
            self.phase, self.reason = "Failed", f"harness error: {type(e).__name__}: {e}"
            self.kubelet.harness.log(f"pod {self.namespace}/{self.name}: {self.reason}")
            await self.push_status()

    async def _spawn(self, run: ContainerRun, volumes: dict[str, Path]) -> asyncio.subprocess.Process:
        c = run.spec
        env = self._resolve_env(c)
        mounts = self._container_mounts(c, volumes)
        argv = self._command(c, env, mounts)
        penv = dict(self.kubelet.base_env)
        penv.update({k: self._translate(v, mounts) for k, v in env.items()})
        run.message_file = mounts[c.get("terminationMessagePath") or "/dev/termination-log"]
        run.message_file.unlink(missing_ok=True)
        run.log = self.dir / f"{c['name']}.log"
        with open(run.log, "ab") as logf:  # noqa: ASYNC230  (a local file, opened once per start)
            logf.write(f"\n=== {now_iso()} {' '.join(argv)}\n".encode())
            logf.flush()
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdout=logf,
                stderr=asyncio.subprocess.STDOUT,
                env=penv,
                cwd=str(self.dir),
                start_new_session=True,
            )
        run.proc = proc
        run.started_at = time.monotonic()
        run.state = {"running": {"startedAt": now_iso()}}
        self.kubelet.harness.log(f"started {self.namespace}/{self.name}/{c['name']} pid {proc.pid}")
        return proc

    async def _run_to_end(self, run: ContainerRun, volumes: dict[str, Path]) -> int:
        proc = await self._spawn(run, volumes)
        return await proc.wait()

    def _termination_message(self, run: ContainerRun, code: int) -> str:
        msg = run.message_file.read_text()[-4096:] if run.message_file and run.message_file.exists() else ""
        if (
            not msg
            and code != 0
            and run.spec.get("terminationMessagePolicy") == "FallbackToLogsOnError"
            and run.log
        ):
            msg = "\n".join(run.log.read_text(errors="replace").splitlines()[-80:])[-2048:]
        return msg

    async def _supervise(self, run: ContainerRun, volumes: dict[str, Path], policy: str) -> None:
        while not self.stopping:
            try:
                proc = await self._spawn(run, volumes)
            except NotReadyYet as e:
                run.state = {"waiting": {"reason": "CreateContainerConfigError", "message": str(e)}}
                await self.push_status()
                await asyncio.sleep(0.5)
                continue
            await self.push_status()
            prober = asyncio.create_task(self._probe(run))
            code = await proc.wait()
            prober.cancel()
            run.ready = False
            message = self._termination_message(run, code)
            term = {
                "exitCode": code,
                "reason": "Completed" if code == 0 else "Error",
                "finishedAt": now_iso(),
            }
            if message:
                term["message"] = message
            run.state = {"terminated": term}
            if self.stopping:
                break
            if policy == "Never" or (policy == "OnFailure" and code == 0):
                self.phase = "Succeeded" if code == 0 else "Failed"
                await self.push_status()
                return
            run.restarts += 1
            backoff = min(0.5 * 2 ** min(run.restarts - 1, 4), 5.0)
            run.state = {
                "waiting": {"reason": "CrashLoopBackOff", "message": f"back-off {backoff}s (exit {code})"}
            }
            run.last_state = {"terminated": term}  # type: ignore[attr-defined]  # an ad-hoc attribute
            await self.push_status()
            await asyncio.sleep(backoff)

    async def _probe(self, run: ContainerRun) -> None:
        readiness = run.spec.get("readinessProbe")
        liveness = run.spec.get("livenessProbe")
        failures = {"readiness": 0, "liveness": 0}
        started = time.monotonic()
        if not readiness:
            run.ready = True
            await self.push_status()
        while True:
            for kind, probe in (("readiness", readiness), ("liveness", liveness)):
                if not probe:
                    continue
                ok = await self._check(probe)
                if kind == "readiness":
                    if ok:
                        failures[kind] = 0
                        if not run.ready:
                            run.ready = True
                            await self.push_status()
                    else:
                        failures[kind] += 1
                        if run.ready and failures[kind] >= int(probe.get("failureThreshold", 3)):
                            run.ready = False
                            await self.push_status()
                else:
                    grace = min(float(probe.get("initialDelaySeconds", 0)), 3.0)
                    if ok or time.monotonic() - started < grace:
                        failures[kind] = 0
                    else:
                        failures[kind] += 1
                        if failures[kind] >= int(probe.get("failureThreshold", 3)) and run.proc is not None:
                            self.kubelet.harness.log(
                                f"liveness failed: restarting {self.name}/{run.spec['name']}"
                            )
                            _signal(run.proc, signal.SIGKILL)
                            return
            period = min(float((readiness or liveness or {}).get("periodSeconds", 10)), PROBE_PERIOD_CAP)
            await asyncio.sleep(period)

    async def _check(self, probe: dict[str, Any]) -> bool:
        try:
            if "httpGet" in probe:
                h = probe["httpGet"]
                url = f"http://127.0.0.1:{self.host_port(h['port'])}{h.get('path', '/')}"
                timeout = aiohttp.ClientTimeout(total=min(float(probe.get("timeoutSeconds", 1)), 2.0))
                async with self.kubelet.http.get(url, timeout=timeout) as resp:
                    return 200 <= resp.status < 400
            if "tcpSocket" in probe:
                port = self.host_port(probe["tcpSocket"]["port"])
                _, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 2.0)
                w.close()
                return True
        except (TimeoutError, OSError, aiohttp.ClientError):
            return False
        return True  # exec probes are not run by the harness

    async def stop(self, grace: float) -> None:
        self.stopping = True
        procs = [c.proc for c in self.containers if c.proc is not None and c.proc.returncode is None]
        for p in procs:
            _signal(p, signal.SIGTERM)
        deadline = time.monotonic() + min(grace, GRACE_CAP)
        for p in procs:
            try:
                await asyncio.wait_for(p.wait(), max(deadline - time.monotonic(), 0.05))
            except TimeoutError:
                _signal(p, signal.SIGKILL)
                await p.wait()
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001, S110  (stopping)
                pass

    def kill(self, sig: int = signal.SIGKILL) -> None:
        for c in self.containers:
            if c.proc is not None and c.proc.returncode is None:
                _signal(c.proc, sig)

    # -- status -------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        ready = bool(self.containers) and all(c.ready for c in self.containers) and self.phase == "Running"
        cstats = []
        for c in self.containers:
            st: dict[str, Any] = {
                "name": c.spec["name"],
                "ready": c.ready,
                "restartCount": c.restarts,
                "state": c.state,
                "image": c.spec.get("image", ""),
                "started": "running" in c.state,
            }
            if getattr(c, "last_state", None):
                st["lastState"] = c.last_state  # type: ignore[attr-defined]  # an ad-hoc attribute
            cstats.append(st)
        conds = [
            {"type": "PodScheduled", "status": "True"},
            {"type": "Initialized", "status": "True" if self.phase != "Pending" else "False"},
            {"type": "ContainersReady", "status": "True" if ready else "False"},
            {"type": "Ready", "status": "True" if ready else "False"},
        ]
        status: dict[str, Any] = {
            "phase": self.phase,
            "conditions": conds,
            "podIP": "127.0.0.1",
            "hostIP": "127.0.0.1",
            "containerStatuses": cstats,
        }
        if self.init_statuses:
            status["initContainerStatuses"] = self.init_statuses
        if self.reason:
            status["message"] = self.reason
        return status

    async def push_status(self) -> None:
        st = self.status()
        if st == self._last_status or self.stopping:
            return
        self._last_status = st
        await self.kubelet.harness.patch_status("v1/pods", self.namespace, self.name, st)


def _signal(proc: asyncio.subprocess.Process, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # the container's whole process group
    except (ProcessLookupError, PermissionError):
        pass


class Kubelet:
    def __init__(
        self,
        harness: Harness,
        root: Path,
        addresses: AddressBook,
        binaries: dict[str, list[str]],
        base_env: dict[str, str],
    ) -> None:
        self.harness = harness
        self.root = root
        self.addresses = addresses
        self.binaries = binaries
        self.base_env = base_env
        self.pods: dict[str, PodRuntime] = {}  # by uid
        self.http = aiohttp.ClientSession()
        self._claims: dict[str, Path] = {}  # claim uid -> directory

    def claim_dir(self, claim: dict[str, Any]) -> Path:
        meta = claim["metadata"]
        d = self.root / "volumes" / meta["namespace"] / f"{meta['name']}-{meta['uid'][:8]}"
        d.mkdir(parents=True, exist_ok=True)
        self._claims[meta["uid"]] = d
        return d

    async def sync(self) -> None:
        api = self.harness.api
        pods = api.list_objects("v1/pods", copy_=False)
        by_uid = {p["metadata"]["uid"]: p for p in pods}
        for p in pods:
            meta = p["metadata"]
            rt = self.pods.get(meta["uid"])
            if meta.get("deletionTimestamp"):
                if rt is not None:
                    await rt.stop(float(p["spec"].get("terminationGracePeriodSeconds", 30)))
                    self.pods.pop(meta["uid"], None)
                    shutil.rmtree(rt.dir, ignore_errors=True)
                await self.harness.remove_finalizer(
                    "v1/pods", meta["namespace"], meta["name"], "harness.etcdstore.io/kubelet"
                )
                continue
            if rt is None:
                if p.get("status", {}).get("phase") in ("Succeeded", "Failed"):
                    continue
                rt = PodRuntime(self, copy.deepcopy(p))
                self.pods[meta["uid"]] = rt
                rt.start()
            else:
                rt.refresh_volumes()
        for uid in list(self.pods):
            if uid not in by_uid:  # vanished without a graceful deletion
                rt = self.pods.pop(uid)
                await rt.stop(0)
                shutil.rmtree(rt.dir, ignore_errors=True)
        live_claims = {
            c["metadata"]["uid"] for c in api.list_objects("v1/persistentvolumeclaims", copy_=False)
        }
        for uid in list(self._claims):
            if uid not in live_claims:  # the claim is gone: so is its volume
                shutil.rmtree(self._claims.pop(uid), ignore_errors=True)

    def runtime(self, namespace: str, name: str) -> PodRuntime | None:
        for rt in self.pods.values():
            if rt.namespace == namespace and rt.name == name and not rt.stopping:
                return rt
        return None

    async def close(self) -> None:
        await asyncio.gather(*(rt.stop(0) for rt in self.pods.values()), return_exceptions=True)
        self.pods.clear()
        await self.http.close()


PYTHON = [sys.executable]
