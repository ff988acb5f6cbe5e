"""One pod on one node: what the kubelet's pod worker does, with local processes for containers.

Order of work: podIP/hostIP and Pending status -> images looked up in the image table (ErrImagePull /
ImagePullBackOff when absent) -> volumes (FailedMount while something is missing) -> init containers one by
one to completion -> all containers, each supervised (restartPolicy, CrashLoopBackOff back-off, startup /
readiness / liveness probes) -> status written back through pods/status whenever it changes. Deletion:
preStop hooks, SIGTERM, SIGKILL after the grace period, a terminal phase, then DELETE with grace 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from . import dns
from .nodeagent_images import Image, resolve
from .nodeagent_kube import ApiError, Kube, now_iso
from .nodeagent_volumes import NotReady, Volumes, field_value, resource_value

if TYPE_CHECKING:
    from .nodeagent import NodeKubelet

log = logging.getLogger("localkube.nodeagent")
Obj = dict[str, Any]
PODEXEC = str(Path(__file__).resolve().parent / "podexec.py")
_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)|\$\$")
_ANY_V4 = re.compile(r"(?<![\d.])0\.0\.0\.0(?![\d.])")
_ANY_V6 = re.compile(r"\[::\]")
MANAGED_CONDITIONS = ("PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready", "PodScheduled")


class ConfigError(Exception):
    """CreateContainerConfigError: the container cannot be configured (missing key, runAsNonRoot...)."""


def expand(value: str, env: dict[str, str]) -> str:
    """The kubelet's $(VAR) expansion: defined variables are replaced, `$$` is a literal `$`, others stay."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _VAR.sub(sub, value)


def rewrite_any(value: str, pod_ip: str) -> str:
    """0.0.0.0 / [::] in a listen address become the pod IP (pods share the host's network)."""
    return _ANY_V6.sub(pod_ip, _ANY_V4.sub(pod_ip, value))


def service_env(services: list[Obj], namespace: str, enable_links: bool) -> dict[str, str]:
    """The docker-links style variables the kubelet injects for the Services of the pod's namespace
    (only `kubernetes` from default when enableServiceLinks is false)."""
    env: dict[str, str] = {}
    for svc in services:
        meta, spec = svc["metadata"], svc.get("spec") or {}
        ip = spec.get("clusterIP")
        if not ip or ip == "None":
            continue
        is_master = meta["namespace"] == "default" and meta["name"] == "kubernetes"
        if not is_master and (meta["namespace"] != namespace or not enable_links):
            continue
        ports = spec.get("ports") or []
        if not ports:
            continue
        prefix = meta["name"].upper().replace("-", "_")
        env[f"{prefix}_SERVICE_HOST"] = ip
        env[f"{prefix}_SERVICE_PORT"] = str(ports[0]["port"])
        for p in ports:
            if p.get("name"):
                env[f"{prefix}_SERVICE_PORT_{p['name'].upper().replace('-', '_')}"] = str(p["port"])
        proto0 = (ports[0].get("protocol") or "TCP").lower()
        env[f"{prefix}_PORT"] = f"{proto0}://{ip}:{ports[0]['port']}"
        for p in ports:
            proto = p.get("protocol") or "TCP"
            base = f"{prefix}_PORT_{p['port']}_{proto.upper()}"
            env[base] = f"{proto.lower()}://{ip}:{p['port']}"
            env[f"{base}_PROTO"] = proto.lower()
            env[f"{base}_PORT"] = str(p["port"])
            env[f"{base}_ADDR"] = ip
    return env


@dataclass
class Container:
    spec: Obj
    init: bool = False
    image: Image | None = None
    proc: asyncio.subprocess.Process | None = None
    restarts: int = 0
    ready: bool = False
    started: bool = False
    state: Obj = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: Obj = field(default_factory=dict)
    started_at: float = 0.0
    next_backoff: float = 0.0
    exec_spec: Obj | None = None
    container_id: str = ""
    killing: str = ""  # why the agent killed it (liveness/startup failure), for the message

    @property
    def name(self) -> str:
        return self.spec["name"]


class PodRuntime:
    def __init__(self, node: NodeKubelet, pod: Obj) -> None:
        self.node = node
        self.kube: Kube = node.kube
        self.pod = pod
        meta = pod["metadata"]
        self.namespace, self.name, self.uid = meta["namespace"], meta["name"], meta["uid"]
        self.dir: Path = node.agent.root / "pods" / f"{self.namespace}_{self.name}_{self.uid}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.host_network = bool(pod["spec"].get("hostNetwork"))
        self.ip = (
            node.ip
            if self.host_network
            else node.allocate_ip(self.uid, (pod.get("status") or {}).get("podIP"))
        )
        self.hostname = dns.pod_hostname(pod)
        self.volumes = Volumes(self)
        spec = pod["spec"]
        self.inits = [Container(c, init=True) for c in spec.get("initContainers") or []]
        self.containers = [Container(c) for c in spec["containers"]]
        # adopted from an earlier agent run: its processes died with it, so each started container restarts
        for kind, group in (("initContainerStatuses", self.inits), ("containerStatuses", self.containers)):
            prev = {s["name"]: s for s in (pod.get("status") or {}).get(kind) or []}
            for c in group:
                st = prev.get(c.name)
                if st:
                    ran = "running" in (st.get("state") or {}) or "terminated" in (st.get("state") or {})
                    c.restarts = int(st.get("restartCount", 0)) + (1 if ran else 0)
        for c in self.inits:
            c.state = {"waiting": {"reason": "PodInitializing"}}
        self.phase = "Pending"
        self.message = ""
        self.reason = ""
        self.initialized = not self.inits
        self.sandbox_ready = False
        self.start_time = (pod.get("status") or {}).get("startTime") or now_iso()
        self.terminating = False
        self.gone = False
        self._transitions: dict[str, tuple[str, str]] = {}
        self._pushed: Obj | None = None
        self._dirty = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._main: asyncio.Task[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()
        self.files = self.dir / "etc"
        self.files.mkdir(exist_ok=True)
        (self.dir / "pod.json").write_text(json.dumps(pod))  # for `nodeagent logs|exec` (default container)

    # -- public -----------------------------------------------------------------------------------------------
    @property
    def policy(self) -> str:
        return self.pod["spec"].get("restartPolicy") or "Always"

    def start(self) -> None:
        self._writer = asyncio.create_task(self._status_writer(), name=f"status {self.namespace}/{self.name}")
        self._main = asyncio.create_task(self._run(), name=f"pod {self.namespace}/{self.name}")

    def update(self, pod: Obj) -> None:
        self.pod = pod

    def mark(self) -> None:
        self._dirty.set()

    # -- logs ------------------------------------------------------------------------------------------------
    def log_path(self, c: Container, restarts: int | None = None) -> Path:
        d = self.dir / "logs" / c.name
        d.mkdir(parents=True, exist_ok=True)
        return d / f"{c.restarts if restarts is None else restarts}.log"

    # -- the worker ------------------------------------------------------------------------------------------
    async def _run(self) -> None:
        try:
            self.write_etc_files()
            self.mark()
            if not await self._pull_images():
                return
            while not self.terminating:
                try:
                    await self.volumes.setup()
                    break
                except NotReady as e:
                    if self.message != str(e):
                        self.node.agent.event(self.kube, self.pod, "FailedMount", str(e), warning=True)
                    self.message = f"FailedMount: {e}"
                    self.mark()
                    await asyncio.sleep(1.0)
            self.message = ""
            self.sandbox_ready = True
            self.mark()
            self._tasks.append(asyncio.create_task(self._refresh_volumes()))
            for c in self.inits:
                if self.terminating:
                    return
                if not await self._run_init(c):
                    return
            self.initialized = True
            self.mark()
            await asyncio.gather(*(self._supervise(c) for c in self.containers))
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.exception("pod %s/%s", self.namespace, self.name)
            self.message = f"localkube node agent error: {type(e).__name__}: {e}"
            self.mark()

    def write_etc_files(self) -> None:
        dns.write_in_place(self.files / "hostname", self.hostname + "\n")
        dns.write_in_place(
            self.files / "resolv.conf",
            dns.resolv_conf(self.namespace, self.node.agent.dns_address, self.node.agent.domain),
        )
        self.node.agent.refresh_hosts(self)

    async def _pull_images(self) -> bool:
        attempt = 0
        while not self.terminating:
            missing = []
            for c in self.inits + self.containers:
                c.image = resolve(c.spec.get("image") or "")
                if c.image is None:
                    missing.append(c)
            if not missing:
                return True
            for c in missing:
                msg = (
                    f'Failed to pull image "{c.spec.get("image")}": not in the localkube image table '
                    "(e2e/localkube/nodeagent_images.py)"
                )
                if attempt == 0:
                    c.state = {"waiting": {"reason": "ErrImagePull", "message": msg}}
                    self.node.agent.event(self.kube, self.pod, "Failed", msg, warning=True)
                else:
                    c.state = {
                        "waiting": {
                            "reason": "ImagePullBackOff",
                            "message": f'Back-off pulling image "{c.spec.get("image")}"',
                        }
                    }
            self.mark()
            delay = min(self.node.agent.backoff_initial * 2**attempt, self.node.agent.backoff_max)
            await asyncio.sleep(delay / 2)
            if attempt > 0:
                for c in missing:
                    c.state = {"waiting": {"reason": "ErrImagePull", "message": "image not in the table"}}
                self.mark()
            await asyncio.sleep(delay / 2)
            attempt += 1
        return False

    async def _refresh_volumes(self) -> None:
        while True:
            await asyncio.sleep(self.node.agent.volume_sync_period)
            await self.volumes.refresh()

    # -- containers ------------------------------------------------------------------------------------------
    async def _resolve_env(self, c: Container) -> dict[str, str]:
        spec = c.spec
        image = c.image
        assert image is not None
        enable_links = self.pod["spec"].get("enableServiceLinks", True)
        svc_env = service_env(self.node.agent.cluster.services(), self.namespace, enable_links)
        env: dict[str, str] = {}
        cache: dict[tuple[str, str], Obj | None] = {}

        async def obj(kind: str, name: str, optional: bool) -> Obj | None:
            if (kind, name) not in cache:
                try:
                    cache[(kind, name)] = await self.kube.get(
                        f"/api/v1/namespaces/{self.namespace}/{kind}/{name}"
                    )
                except ApiError as e:
                    if e.status not in (403, 404):
                        raise
                    if not optional:
                        raise ConfigError(f'{kind[:-1]} "{name}" not found') from None
                    cache[(kind, name)] = None
            return cache[(kind, name)]

        def decode(kind: str, v: str) -> str:
            import base64

            return base64.b64decode(v).decode(errors="replace") if kind == "secrets" else v

        for ef in spec.get("envFrom") or []:
            ref = ef.get("configMapRef") or ef.get("secretRef") or {}
            kind = "configmaps" if "configMapRef" in ef else "secrets"
            o = await obj(kind, ref["name"], bool(ref.get("optional")))
            for k, v in ((o or {}).get("data") or {}).items():
                env[ef.get("prefix", "") + k] = decode(kind, v)
        for e in spec.get("env") or []:
            name = e["name"]
            if "valueFrom" not in e:
                env[name] = expand(str(e.get("value", "")), {**svc_env, **env})
                continue
            src = e["valueFrom"]
            if "fieldRef" in src:
                env[name] = field_value(self.pod, src["fieldRef"]["fieldPath"], self.ip, self.node.ip)
            elif "resourceFieldRef" in src:
                env[name] = resource_value(self.pod, src["resourceFieldRef"], self.node.allocatable, c.name)
            elif "configMapKeyRef" in src or "secretKeyRef" in src:
                kind = "configmaps" if "configMapKeyRef" in src else "secrets"
                ref = src.get("configMapKeyRef") or src.get("secretKeyRef")
                o = await obj(kind, ref["name"], bool(ref.get("optional")))
                data = (o or {}).get("data") or {}
                if ref["key"] not in data:
                    if ref.get("optional"):
                        continue
                    raise ConfigError(
                        f"couldn't find key {ref['key']} in {kind[:-1].capitalize()} "
                        f"{self.namespace}/{ref['name']}"
                    )
                env[name] = decode(kind, data[ref["key"]])
        full = dict(image.env)
        full.update({"PATH": image.path, "HOSTNAME": self.hostname, "HOME": image.home})
        full.update({k: v for k, v in svc_env.items() if k not in env})
        full.update(env)
        return full

    def _user(self, c: Container) -> tuple[int, int, list[int]]:
        psc = self.pod["spec"].get("securityContext") or {}
        csc = c.spec.get("securityContext") or {}
        assert c.image is not None
        uid = csc.get("runAsUser", psc.get("runAsUser", c.image.uid))
        gid = csc.get("runAsGroup", psc.get("runAsGroup", c.image.gid if uid == c.image.uid else 0))
        if csc.get("runAsNonRoot", psc.get("runAsNonRoot")) and int(uid) == 0:
            raise ConfigError("container has runAsNonRoot and image will run as root")
        groups = [int(g) for g in psc.get("supplementalGroups") or []]
        if psc.get("fsGroup") is not None:
            groups.append(int(psc["fsGroup"]))
        return int(uid), int(gid), groups

    def _argv(self, c: Container, env: dict[str, str]) -> list[str]:
        image = c.image
        assert image is not None
        command, args = c.spec.get("command"), c.spec.get("args")
        if command:
            argv = list(command) + list(args or [])
        else:
            argv = list(image.entrypoint) + list(args if args is not None else image.cmd)
        if not argv:
            raise ConfigError("no command specified")
        argv = [rewrite_any(expand(a, env), self.ip) for a in argv]
        program = image.program(argv[0])
        if program is None:
            raise FileNotFoundError(f'exec: "{argv[0]}": executable file not found in $PATH')
        return [program, *argv[1:]]

    def _mounts(self, c: Container, env: dict[str, str]) -> list[Obj]:
        mounts = []
        for m in c.spec.get("volumeMounts") or []:
            src = self.volumes.paths.get(m["name"])
            if src is None:
                raise ConfigError(f"volume {m['name']!r} is not set up")
            sub = m.get("subPath") or (expand(m["subPathExpr"], env) if m.get("subPathExpr") else "")
            if sub:
                src = src / sub
                if not src.exists():
                    src.mkdir(parents=True)
            mounts.append(
                {
                    "source": str(src),
                    "target": m["mountPath"],
                    "readOnly": bool(m.get("readOnly")) or self.volumes.read_only.get(m["name"], False),
                }
            )
        targets = {m["target"] for m in mounts}
        assert c.image is not None
        passwd, group = c.image.passwd_group()
        for name, content in (("passwd", passwd), ("group", group)):
            f = self.files / f"{name}.{c.name}"
            dns.write_in_place(f, content)
            if f"/etc/{name}" not in targets:
                mounts.append({"source": str(f), "target": f"/etc/{name}", "readOnly": True})
        for name in ("hosts", "resolv.conf", "hostname"):
            if f"/etc/{name}" not in targets:
                mounts.append({"source": str(self.files / name), "target": f"/etc/{name}", "readOnly": False})
        tpath = c.spec.get("terminationMessagePath") or "/dev/termination-log"
        tfile = self.dir / "termination" / c.name
        tfile.parent.mkdir(exist_ok=True)
        tfile.write_bytes(b"")
        os.chmod(tfile, 0o666)
        mounts.append({"source": str(tfile), "target": tpath, "readOnly": False})
        return mounts

    async def _prepare(self, c: Container) -> Obj:
        env = await self._resolve_env(c)
        uid, gid, groups = self._user(c)
        argv = self._argv(c, env)
        csc = c.spec.get("securityContext") or {}
        return {
            "hostname": self.hostname,
            "uid": uid,
            "gid": gid,
            "groups": groups,
            "cwd": c.spec.get("workingDir")
            or (c.image.home if c.image and c.image.uid and c.image.home != "/nonexistent" else "/"),
            "cwd_from_image": not c.spec.get("workingDir"),
            "argv": argv,
            "env": {k: rewrite_any(v, self.ip) for k, v in env.items()},
            "mounts": self._mounts(c, env),
            "readOnlyRoot": bool(csc.get("readOnlyRootFilesystem")),
            "masks": self.node.agent.masks,
            # kept visible whatever the pod mounts over their ancestors (e.g. an emptyDir at /tmp)
            "image_paths": list(c.image.needs) if c.image else [],
            "stage": str(self.dir / "stage" / c.name),
            "created_log": str(self.node.agent.root / "mountpoints.log"),
        }

    async def _spawn(self, c: Container, spec: Obj) -> asyncio.subprocess.Process:
        specfile = self.dir / "specs" / f"{c.name}.json"
        specfile.parent.mkdir(exist_ok=True)
        specfile.write_text(json.dumps(spec))
        os.chmod(specfile, 0o600)
        logf = open(self.log_path(c), "ab")  # noqa: SIM115, ASYNC230  (handed to the child)
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-I",
                "-S",
                PODEXEC,
                str(specfile),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=logf,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            logf.close()
        c.proc, c.exec_spec = proc, spec
        (specfile.parent / f"{c.name}.pid").write_text(str(proc.pid))
        c.started_at = time.monotonic()
        c.container_id = f"localkube://{self.uid[:8]}-{c.name}-{c.restarts}-{proc.pid}"
        c.state = {"running": {"startedAt": now_iso()}}
        log.info(
            "started %s/%s/%s pid %d as uid %s", self.namespace, self.name, c.name, proc.pid, spec["uid"]
        )
        return proc

    def _termination(self, c: Container, code: int, started: str) -> Obj:
        if code < 0:
            code = 128 - code  # killed by a signal: 128 + signo, as a runtime reports it
        msg = ""
        tfile = self.dir / "termination" / c.name
        with contextlib.suppress(OSError):
            msg = tfile.read_text(errors="replace")[-4096:]
        if not msg and code != 0 and c.spec.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            with contextlib.suppress(OSError):
                lines = self.log_path(c).read_text(errors="replace").splitlines()[-80:]
                msg = "\n".join(lines)[-2048:]
        reason = "Completed" if code == 0 else "Error"
        if code == 128:
            with contextlib.suppress(OSError):
                tail = self.log_path(c).read_text(errors="replace").splitlines()[-1:]
                if tail and tail[0].startswith("podexec: failed to start container"):
                    reason, msg = "StartError", tail[0].removeprefix("podexec: ")
        term = {
            "exitCode": code,
            "reason": reason,
            "startedAt": started,
            "finishedAt": now_iso(),
            "containerID": c.container_id,
        }
        if msg:
            term["message"] = msg
        return term

    async def _run_once(self, c: Container) -> int | None:
        """Start `c` and wait for it to exit (None: it could not be configured; the caller retries)."""
        try:
            spec = await self._prepare(c)
        except ConfigError as e:
            c.state = {"waiting": {"reason": "CreateContainerConfigError", "message": str(e)}}
            self.mark()
            return None
        except FileNotFoundError as e:
            c.started_at = 0.0
            c.state = {
                "terminated": {
                    "exitCode": 128,
                    "reason": "StartError",
                    "message": str(e),
                    "startedAt": now_iso(),
                    "finishedAt": now_iso(),
                }
            }
            self.mark()
            return 128
        proc = await self._spawn(c, spec)
        started = c.state["running"]["startedAt"]
        self.node.agent.event(self.kube, self.pod, "Started", f"Started container {c.name}")
        post = (c.spec.get("lifecycle") or {}).get("postStart")
        if post:  # the kubelet runs it right after the start; a failure kills the container
            ok, why = await self.run_handler(c, post, 30.0)
            if not ok:
                self.node.agent.event(self.kube, self.pod, "FailedPostStartHook", why, warning=True)
                c.killing = f"PostStartHookError: {why}"
                _killpg(proc.pid, signal.SIGKILL)
        probes = None if c.init else asyncio.create_task(self._probe_loop(c))
        if probes is None:
            c.started = True
        self.mark()
        code = await proc.wait()
        if probes is not None:
            probes.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await probes
        c.ready = c.started = False
        c.state = {"terminated": self._termination(c, code, started)}
        if c.killing and not self.terminating:
            c.state["terminated"].setdefault("message", c.killing)
        c.killing = ""
        c.proc = None
        self.mark()
        return c.state["terminated"]["exitCode"]

    def _backoff(self, c: Container) -> float:
        agent = self.node.agent
        ran = time.monotonic() - c.started_at if c.started_at else 0.0
        if ran > 2 * agent.backoff_max:
            c.next_backoff = 0.0
        delay = c.next_backoff
        c.next_backoff = agent.backoff_initial if not delay else min(delay * 2, agent.backoff_max)
        return delay

    async def _wait_backoff(self, c: Container, delay: float) -> None:
        if delay <= 0:
            return
        c.state = {
            "waiting": {
                "reason": "CrashLoopBackOff",
                "message": f"back-off {delay:g}s restarting failed container={c.name} "
                f"pod={self.name}_{self.namespace}({self.uid})",
            }
        }
        self.mark()
        self.node.agent.event(
            self.kube,
            self.pod,
            "BackOff",
            f"Back-off restarting failed container {c.name} in pod {self.name}_{self.namespace}({self.uid})",
            warning=True,
        )
        await asyncio.sleep(delay)

    async def _run_init(self, c: Container) -> bool:
        while not self.terminating:
            c.state = {"waiting": {"reason": "PodInitializing"}}
            code = await self._run_once(c)
            if code is None:
                await asyncio.sleep(1.0)
                continue
            if code == 0:
                c.ready = True
                self.mark()
                return True
            if self.terminating:
                return False
            if self.policy == "Never":
                self.phase, self.reason = "Failed", ""
                self.mark()
                return False
            c.last_state = {"terminated": c.state["terminated"]}
            c.restarts += 1
            await self._wait_backoff(c, self._backoff(c))
        return False

    async def _supervise(self, c: Container) -> None:
        while not self.terminating:
            code = await self._run_once(c)
            if code is None:
                await asyncio.sleep(1.0)
                continue
            if self.terminating:
                return
            if self.policy == "Never" or (self.policy == "OnFailure" and code == 0):
                self._check_terminal()
                return
            c.last_state = {"terminated": c.state["terminated"]}
            c.restarts += 1
            delay = self._backoff(c)
            await self._wait_backoff(c, delay)

    def _check_terminal(self) -> None:
        states = [c.state for c in self.containers]
        if all("terminated" in s for s in states):
            ok = all(s["terminated"]["exitCode"] == 0 for s in states)
            self.phase = "Succeeded" if ok else "Failed"
        self.mark()

    # -- probes ------------------------------------------------------------------------------------------------
    def _port(self, c: Container, port: int | str) -> int:
        if isinstance(port, int) or str(port).isdigit():
            return int(port)
        for p in c.spec.get("ports") or []:
            if p.get("name") == port:
                return int(p["containerPort"])
        raise ValueError(f"port {port!r} not found")

    async def run_handler(self, c: Container, h: Obj, timeout: float) -> tuple[bool, str]:
        """Run an httpGet/tcpSocket/exec action against container `c` (probes and preStop hooks)."""
        try:
            if "httpGet" in h:
                g = h["httpGet"]
                scheme = (g.get("scheme") or "HTTP").lower()
                host = g.get("host") or self.ip
                url = f"{scheme}://{host}:{self._port(c, g['port'])}{g.get('path') or '/'}"
                headers = {x["name"]: x["value"] for x in g.get("httpHeaders") or []}
                headers.setdefault("User-Agent", "kube-probe/1.34")
                async with self.node.agent.http.get(
                    url, headers=headers, ssl=False, timeout=aiohttp.ClientTimeout(total=timeout)
                ) as resp:
                    await resp.read()
                    ok = 200 <= resp.status < 400
                    return ok, "" if ok else f"HTTP probe failed with statuscode: {resp.status}"
            if "tcpSocket" in h:
                t = h["tcpSocket"]
                _, w = await asyncio.wait_for(
                    asyncio.open_connection(t.get("host") or self.ip, self._port(c, t["port"])), timeout
                )
                w.close()
                return True, ""
            if "exec" in h:
                return await self._exec_action(c, h["exec"].get("command") or [], timeout)
            if "sleep" in h:
                await asyncio.sleep(min(float(h["sleep"].get("seconds", 0)), timeout))
                return True, ""
            return False, f"handler {sorted(h)} is not supported by the localkube node agent"
        except TimeoutError:
            return False, f"timeout after {timeout:g}s"
        except (OSError, aiohttp.ClientError, ValueError) as e:
            return False, f"{type(e).__name__}: {e}"

    async def _exec_action(self, c: Container, command: list[str], timeout: float) -> tuple[bool, str]:
        """Run `command` inside the running container (its mount/UTS namespaces, user and environment)."""
        if c.proc is None or c.exec_spec is None or c.image is None:
            return False, "container is not running"
        program = c.image.program(command[0]) if command else None
        if program is None:
            return False, f"exec: {command[:1]} not found"
        spec = {**c.exec_spec, "argv": [program, *command[1:]], "enter_pid": c.proc.pid, "mounts": []}
        specfile = self.dir / "specs" / f"{c.name}.exec.{time.monotonic_ns()}.json"
        specfile.write_text(json.dumps(spec))
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-I",
                "-S",
                PODEXEC,
                str(specfile),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                out, _ = await asyncio.wait_for(proc.communicate(), timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
                return False, f"command timed out after {timeout:g}s"
            return proc.returncode == 0, out.decode(errors="replace")[-1024:]
        finally:
            specfile.unlink(missing_ok=True)

    async def _probe_loop(self, c: Container) -> None:
        spec = c.spec
        startup, readiness, liveness = (
            spec.get("startupProbe"),
            spec.get("readinessProbe"),
            spec.get("livenessProbe"),
        )
        if startup:
            ok = await self._probe(c, startup, "Startup")
            if not ok:
                await self._kill_for(c, "Startup probe failed", startup)
                return
        c.started = True
        if not readiness:
            c.ready = True
        self.mark()
        tasks = []
        if readiness:
            tasks.append(self._probe(c, readiness, "Readiness"))
        if liveness:
            tasks.append(self._liveness(c, liveness))
        if tasks:
            await asyncio.gather(*tasks)

    async def _liveness(self, c: Container, probe: Obj) -> None:
        if not await self._probe(c, probe, "Liveness"):
            await self._kill_for(c, "Liveness probe failed", probe)

    async def _kill_for(self, c: Container, why: str, probe: Obj) -> None:
        self.node.agent.event(
            self.kube,
            self.pod,
            "Killing",
            f"Container {c.name} failed {why.split()[0].lower()} probe, will be restarted",
        )
        c.killing = why
        grace = probe.get(
            "terminationGracePeriodSeconds", self.pod["spec"].get("terminationGracePeriodSeconds", 30)
        )
        await self._stop_container(c, float(grace), run_prestop=True)

    async def _probe(self, c: Container, probe: Obj, kind: str) -> bool:
        """Run `probe` forever (readiness) or until it decides (startup: success; liveness: failure)."""
        period = float(probe.get("periodSeconds", 10))
        timeout = float(probe.get("timeoutSeconds", 1))
        success_threshold = int(probe.get("successThreshold", 1))
        failure_threshold = int(probe.get("failureThreshold", 3))
        await asyncio.sleep(float(probe.get("initialDelaySeconds", 0)))
        ok_run = fail_run = 0
        while True:
            ok, why = await self.run_handler(c, probe, timeout)
            if ok:
                ok_run, fail_run = ok_run + 1, 0
            else:
                ok_run, fail_run = 0, fail_run + 1
                if fail_run == 1 or fail_run == failure_threshold:
                    self.node.agent.event(
                        self.kube, self.pod, "Unhealthy", f"{kind} probe failed: {why}", warning=True
                    )
            if kind == "Startup":
                if ok:
                    return True
                if fail_run >= failure_threshold:
                    return False
            elif kind == "Liveness":
                if fail_run >= failure_threshold:
                    return False
            else:
                if ok and ok_run >= success_threshold and not c.ready:
                    c.ready = True
                    self.mark()
                elif not ok and fail_run >= failure_threshold and c.ready:
                    c.ready = False
                    self.mark()
            await asyncio.sleep(period)

    # -- termination -------------------------------------------------------------------------------------------
    async def _stop_container(self, c: Container, grace: float, *, run_prestop: bool) -> None:
        proc = c.proc
        if proc is None or proc.returncode is not None:
            return
        deadline = time.monotonic() + grace
        pre = (c.spec.get("lifecycle") or {}).get("preStop")
        if run_prestop and pre and grace > 0:
            await self.run_handler(c, pre, max(grace, 0.1))
        _killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(proc.wait()), max(deadline - time.monotonic(), 0.0) or 0.01)
        except TimeoutError:
            _killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
        _killpg(proc.pid, signal.SIGKILL)  # whatever the container left behind in its group

    async def terminate(self, grace: float) -> None:
        """Stop every container (preStop, SIGTERM, SIGKILL after `grace`), settle the final status."""
        if self.terminating:
            await self._stopped.wait()
            return
        self.terminating = True
        self.mark()
        try:
            await asyncio.gather(
                *(self._stop_container(c, grace, run_prestop=True) for c in self.inits + self.containers)
            )
            if self._main is not None:
                self._main.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._main
            for t in self._tasks:
                t.cancel()
            for c in self.containers:
                if "terminated" not in c.state:
                    prev = c.state.get("running", {}).get("startedAt")
                    c.state = {
                        "terminated": {
                            "exitCode": 137 if prev else 0,
                            "reason": "Error" if prev else "ContainerStatusUnknown",
                            "finishedAt": now_iso(),
                            **({"startedAt": prev} if prev else {}),
                        }
                    }
                c.ready = c.started = False
            if self.phase not in ("Succeeded", "Failed"):
                codes = [c.state["terminated"].get("exitCode", 1) for c in self.containers]
                self.phase = "Succeeded" if codes and all(x == 0 for x in codes) else "Failed"
            self.mark()
        finally:
            self._stopped.set()

    async def flush_status(self) -> None:
        """Write the status now (the final one before the pod object is deleted)."""
        await self._push()

    async def close(self) -> None:
        for t in [*self._tasks, self._main, self._writer]:
            if t is not None:
                t.cancel()
        for t in [*self._tasks, self._main, self._writer]:
            if t is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
        for c in self.inits + self.containers:
            if c.proc is not None and c.proc.returncode is None:
                _killpg(c.proc.pid, signal.SIGKILL)
                with contextlib.suppress(Exception):
                    await c.proc.wait()
        self.node.release_ip(self.uid)

    # -- status ------------------------------------------------------------------------------------------------
    def _cond(self, typ: str, ok: bool, reason: str = "") -> Obj:
        status = "True" if ok else "False"
        prev = self._transitions.get(typ)
        if prev is None or prev[0] != status:
            self._transitions[typ] = (status, now_iso())
        c = {
            "type": typ,
            "status": status,
            "lastProbeTime": None,
            "lastTransitionTime": self._transitions[typ][1],
        }
        if reason and not ok:
            c["reason"] = reason
        return c

    def _cstatus(self, c: Container) -> Obj:
        st: Obj = {
            "name": c.name,
            "image": c.spec.get("image", ""),
            "imageID": "",
            "ready": c.ready,
            "restartCount": c.restarts,
            "started": c.started,
            "state": c.state,
            "lastState": c.last_state or {},
        }
        if c.container_id and "waiting" not in c.state:
            st["containerID"] = c.container_id
        if c.image is not None:
            st["imageID"] = f"localkube://{c.image.pattern}"
        if (c.exec_spec or {}).get("uid") is not None:
            st["user"] = {
                "linux": {
                    "uid": c.exec_spec["uid"],
                    "gid": c.exec_spec["gid"],  # type: ignore[index]  # a uid means exec_spec is set
                    "supplementalGroups": sorted({c.exec_spec["gid"], *c.exec_spec["groups"]}),
                }
            }
        return st

    def status(self) -> Obj:
        terminal = self.phase in ("Succeeded", "Failed")
        if (
            not terminal
            and any("running" in c.state or c.restarts or "terminated" in c.state for c in self.containers)
            and self.initialized
        ):
            self.phase = "Running"
        containers_ready = all(c.ready for c in self.containers) and not terminal and not self.terminating
        latest = self.pod.get("status") or {}
        have = {x.get("type"): x.get("status") for x in latest.get("conditions") or []}
        gates_ok = all(
            have.get(g["conditionType"]) == "True" for g in self.pod["spec"].get("readinessGates") or []
        )
        not_ready = sorted(c.name for c in self.containers if not c.ready)
        why = "PodCompleted" if terminal else "ContainersNotReady"
        conds = [
            self._cond("PodReadyToStartContainers", self.sandbox_ready and not terminal),
            self._cond(
                "Initialized", self.initialized or terminal and not self.inits, "ContainersNotInitialized"
            ),
            self._cond("ContainersReady", containers_ready, why),
            self._cond(
                "Ready",
                containers_ready and gates_ok,
                why if not containers_ready else "ReadinessGatesNotReady",
            ),
        ]
        if not containers_ready and not terminal:
            conds[2]["message"] = conds[3]["message"] = (
                f"containers with unready status: [{' '.join(not_ready)}]"
            )
        conds += [x for x in latest.get("conditions") or [] if x.get("type") not in MANAGED_CONDITIONS[:4]]
        st: Obj = {
            "phase": self.phase,
            "conditions": conds,
            "hostIP": self.node.ip,
            "hostIPs": [{"ip": self.node.ip}],
            "podIP": self.ip,
            "podIPs": [{"ip": self.ip}],
            "startTime": self.start_time,
            "containerStatuses": [self._cstatus(c) for c in self.containers],
            "qosClass": latest.get("qosClass") or "BestEffort",
        }
        if self.inits:
            st["initContainerStatuses"] = [self._cstatus(c) for c in self.inits]
        st["message"] = self.message or None
        st["reason"] = self.reason or None
        return st

    async def _push(self) -> None:
        if self.gone:
            return
        st = self.status()
        if st == self._pushed:
            return
        try:
            out = await self.kube.merge_patch(
                f"/api/v1/namespaces/{self.namespace}/pods/{self.name}/status",
                {"metadata": {"uid": self.uid}, "status": st},
            )
            self._pushed = st
            if isinstance(out, dict) and out.get("metadata", {}).get("uid") == self.uid:
                self.pod = out
        except ApiError as e:
            if e.status in (404, 409):
                if e.status == 404:
                    self.gone = True
                return
            log.warning("pod %s/%s status: %s", self.namespace, self.name, e)
            raise

    async def _status_writer(self) -> None:
        delay = 0.2
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                await self._push()
                delay = 0.2
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001  (retry: the API may be restarting)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                self._dirty.set()
            await asyncio.sleep(0.05)  # coalesce bursts


def _killpg(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
