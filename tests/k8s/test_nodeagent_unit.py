"""Pieces of the node agent that need no control plane: $(VAR) expansion, listen-address rewriting, service
environment, the per-pod hosts file, the image table, the atomic writer with fsGroup, and the exec wrapper's
namespaces, user switch and image paths kept visible under volumes (as root)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import stat
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from localkube import dns
from localkube.nodeagent_images import REPO, masks, resolve
from localkube.nodeagent_pod import PODEXEC, expand, rewrite_any, service_env
from localkube.nodeagent_volumes import apply_fs_group, atomic_write, resource_value


def test_expand_like_the_kubelet() -> None:
    env = {"NAME": "m-0", "EMPTY": ""}
    assert expand("--name=$(NAME)", env) == "--name=m-0"
    assert expand("$(MISSING)-$(EMPTY)x", env) == "$(MISSING)-x"
    assert expand("$$(NAME) costs $$5", env) == "$(NAME) costs $5"


def test_rewrite_any_address_only() -> None:
    assert (
        rewrite_any("--listen-client-urls=http://0.0.0.0:2379,http://[::]:2380", "127.101.0.7")
        == "--listen-client-urls=http://127.101.0.7:2379,http://127.101.0.7:2380"
    )
    assert rewrite_any("10.0.0.0/8 and 100.0.0.01", "127.1.1.1") == "10.0.0.0/8 and 100.0.0.01"


def _svc(ns: str, name: str, ip: str, ports: list[dict], **spec: object) -> dict:
    return {"metadata": {"namespace": ns, "name": name}, "spec": {"clusterIP": ip, "ports": ports, **spec}}


def test_service_env_vars() -> None:
    svcs = [
        _svc("default", "kubernetes", "127.96.0.1", [{"name": "https", "port": 443, "protocol": "TCP"}]),
        _svc("a", "my-db", "127.96.0.9", [{"name": "client", "port": 2379}]),
        _svc("a", "peers", "None", [{"port": 2380}]),
        _svc("b", "other", "127.96.0.10", [{"port": 80}]),
    ]
    env = service_env(svcs, "a", True)
    assert env["KUBERNETES_SERVICE_HOST"] == "127.96.0.1" and env["KUBERNETES_SERVICE_PORT"] == "443"
    assert env["KUBERNETES_PORT_443_TCP"] == "tcp://127.96.0.1:443"
    assert env["MY_DB_SERVICE_HOST"] == "127.96.0.9" and env["MY_DB_SERVICE_PORT_CLIENT"] == "2379"
    assert not any(k.startswith(("PEERS_", "OTHER_")) for k in env)
    assert set(service_env(svcs, "a", False)) == {k for k in env if k.startswith("KUBERNETES_")}


def _pod(
    ns: str,
    name: str,
    ip: str,
    *,
    labels: dict | None = None,
    subdomain: str | None = None,
    ready: bool = True,
) -> dict:
    spec = {"subdomain": subdomain} if subdomain else {}
    return {
        "metadata": {"namespace": ns, "name": name, "labels": labels or {}},
        "spec": spec,
        "status": {
            "podIP": ip,
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def _records() -> dns.Records:
    sel = {"app": "db"}
    pods = [
        _pod("ns1", "db-0", "127.101.0.2", labels=sel, subdomain="db"),
        _pod("ns1", "db-1", "127.102.0.2", labels=sel, subdomain="db", ready=False),
        _pod("ns1", "db-2", "127.103.0.2", labels=sel, subdomain="db", ready=False),
    ]
    services = [
        _svc(
            "ns1", "db", "None", [{"name": "peer", "port": 2380}], selector=sel, publishNotReadyAddresses=True
        ),
        _svc("ns1", "db-ready", "None", [{"port": 2380}], selector=sel),
        _svc("ns1", "db-client", "127.96.3.4", [{"name": "client", "port": 2379}], selector=sel),
        _svc("default", "kubernetes", "127.96.0.1", [{"port": 443}]),
    ]
    return dns.Records.build(services, pods)


def test_dns_records_like_coredns() -> None:
    r = _records()
    assert r.a["db.ns1.svc.cluster.local"] == [
        "127.101.0.2",
        "127.102.0.2",
        "127.103.0.2",
    ]  # published not-ready
    assert r.a["db-ready.ns1.svc.cluster.local"] == ["127.101.0.2"]  # ready pods only
    assert r.a["db-1.db.ns1.svc.cluster.local"] == ["127.102.0.2"]
    assert "db-1.db-ready.ns1.svc.cluster.local" not in r.a  # db-ready is not the pods' subdomain
    assert r.a["db-client.ns1.svc.cluster.local"] == ["127.96.3.4"]
    assert r.a["kubernetes.default.svc.cluster.local"] == ["127.96.0.1"]
    assert ("0", "db-2.db.ns1.svc.cluster.local") == (
        str(r.srv["_peer._tcp.db.ns1.svc.cluster.local"][2][0]),
        r.srv["_peer._tcp.db.ns1.svc.cluster.local"][2][3],
    )


def _query(name: str, qtype: int = 1) -> bytes:
    q = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    return q + b"\0" + struct.pack("!HH", qtype, 1)


async def test_dns_server_answers_over_udp() -> None:
    server = await dns.DnsServer.serve("127.0.0.1", 0)
    server.records = _records()
    port = server.transport.get_extra_info("sockname")[1]
    loop = asyncio.get_running_loop()
    try:
        for name, rcode, ips in (
            ("db-1.db.ns1.svc.cluster.local", 0, ["127.102.0.2"]),
            ("DB.ns1.svc.cluster.local", 0, ["127.101.0.2", "127.102.0.2", "127.103.0.2"]),
            ("db-1.db.ns1.svc.cluster.local.ns1.svc.cluster.local", 3, []),
            ("example.com", 3, []),
        ):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.setblocking(False)
                await loop.sock_connect(s, ("127.0.0.1", port))
                await loop.sock_sendall(s, _query(name))
                resp = await asyncio.wait_for(loop.sock_recv(s, 4096), 5)
            qid, flags, _, ancount = struct.unpack("!HHHH", resp[:8])
            assert qid == 0x1234 and flags & 0x8000 and flags & 0xF == rcode, (name, flags)
            got = [
                ".".join(str(b) for b in resp[i + 12 : i + 16])
                for i in range(len(resp))
                if resp[i : i + 4] == b"\xc0\x0c\x00\x01"
            ]
            assert got == ips and ancount == len(ips), name
        # the kubelet's hosts file: only localhost and the pod itself
        text = dns.hosts_file(_pod("ns1", "db-0", "127.101.0.2", subdomain="db"), "127.101.0.2")
        assert "127.101.0.2\tdb-0.db.ns1.svc.cluster.local db-0" in text and "db-1" not in text
    finally:
        server.close()


def test_write_in_place_keeps_the_inode(tmp_path: Path) -> None:
    f = tmp_path / "hosts"
    dns.write_in_place(f, "a long first content\n")
    ino = f.stat().st_ino
    assert dns.write_in_place(f, "short\n") and f.read_text() == "short\n" and f.stat().st_ino == ino
    assert not dns.write_in_place(f, "short\n")


def test_image_table() -> None:
    assert resolve("etcdstore:0.1.0").uid == 65532
    assert resolve("quay.io/coreos/etcd:v3.4.23").program("etcd").endswith("/etcd")
    assert resolve("etcd-operator:0.1.0").program("etcdoperator").endswith(".venv/bin/etcdoperator")
    assert resolve("quay.io/coreos/etcd:v3.5.9") is None and resolve("nope:1") is None


def test_resource_field_ref_rounds_up() -> None:
    pod = {
        "spec": {"containers": [{"name": "c", "resources": {"limits": {"cpu": "1500m", "memory": "1Gi"}}}]}
    }
    assert resource_value(pod, {"resource": "limits.cpu"}, {}, "c") == "2"
    assert resource_value(pod, {"resource": "limits.memory", "divisor": "1Mi"}, {}, "c") == "1024"
    assert resource_value(pod, {"resource": "requests.memory"}, {}, "c") == str(
        2**30
    )  # requests default to limits
    assert resource_value(pod, {"resource": "limits.cpu", "containerName": "c"}, {"cpu": "4"}, None) == "2"


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_atomic_writer_and_fs_group(tmp_path: Path) -> None:
    root = tmp_path / "secret"
    assert atomic_write(root, {"tls.key": (b"k1", 0o400), "sub/x": (b"x", 0o644)}, 2000)
    assert (root / "tls.key").read_bytes() == b"k1" and (root / "sub" / "x").read_bytes() == b"x"
    assert (root / "..data").is_symlink() and (root / "tls.key").is_symlink()
    st = (root / "tls.key").stat()
    assert st.st_gid == 2000 and stat.S_IMODE(st.st_mode) == 0o440  # fsGroup: group-readable
    first = os.readlink(root / "..data")
    assert not atomic_write(root, {"tls.key": (b"k1", 0o400), "sub/x": (b"x", 0o644)}, 2000)
    assert atomic_write(root, {"tls.key": (b"k2", 0o400)}, 2000)
    assert os.readlink(root / "..data") != first and not (root / first).exists()
    assert (root / "tls.key").read_bytes() == b"k2" and not (root / "sub").exists()
    vol = tmp_path / "pvc"
    (vol / "d").mkdir(parents=True)
    (vol / "d" / "f").write_bytes(b"")
    os.chmod(vol, 0o755)
    apply_fs_group(vol, 3000, read_only=False, policy=None)
    st = vol.stat()
    assert st.st_gid == 3000 and stat.S_IMODE(st.st_mode) == 0o2775
    assert (vol / "d" / "f").stat().st_gid == 3000 and stat.S_IMODE((vol / "d" / "f").stat().st_mode) & 0o060


@pytest.mark.skipif(os.geteuid() != 0, reason="namespaces and setuid need root")
def test_podexec_namespaces_mounts_and_user(tmp_path: Path) -> None:
    tmp_path = Path(tempfile.mkdtemp(prefix="nodeagent-unit-"))  # pytest's own is 0700: not for uid 65532
    os.chmod(tmp_path, 0o755)
    try:
        _podexec(tmp_path)
    finally:
        shutil.rmtree(tmp_path)


def _run_podexec(tmp_path: Path, spec: dict, *, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run podexec.py as the node agent does, on `spec` written to a file."""
    sf = tmp_path / "spec.json"
    sf.write_text(json.dumps(spec))
    return subprocess.run(
        [sys.executable, "-I", "-S", PODEXEC, str(sf)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _podexec(tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    os.chmod(vol, 0o755)  # root-owned 0755: uid 65532 cannot write
    (vol / "hello").write_text("from the volume\n")
    target = tmp_path / "inside" / "mnt"  # does not exist on the host: created as a mount point
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1\tlocalhost\n127.5.6.7\tpeer-0.peers.ns.svc.cluster.local\n")
    script = (
        f"id -u; id -G; hostname; cat {target}/hello; getent hosts peer-0.peers.ns.svc.cluster.local; "
        f"touch {target}/new 2>/dev/null && echo WROTE || echo DENIED; echo $GREETING"
    )
    spec = {
        "hostname": "pod-a",
        "uid": 65532,
        "gid": 65532,
        "groups": [4000],
        "cwd": "/",
        "argv": ["/bin/sh", "-c", script],
        "env": {"GREETING": "hi", "PATH": "/usr/bin:/bin"},
        "mounts": [
            {"source": str(vol), "target": str(target), "readOnly": False},
            {"source": str(hosts), "target": "/etc/hosts", "readOnly": True},
        ],
        "created_log": str(tmp_path / "created.log"),
    }
    out = _run_podexec(tmp_path, spec, timeout=30)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "65532" and set(lines[1].split()) == {"65532", "4000"}
    assert lines[2] == "pod-a" and lines[3] == "from the volume"
    assert lines[4].split()[0] == "127.5.6.7" and lines[5] == "DENIED" and lines[6] == "hi"
    assert os.uname().nodename != "pod-a"  # the UTS namespace was the container's own
    assert not (target / "hello").exists()  # the bind mount stayed inside its mount namespace
    assert str(target) in (tmp_path / "created.log").read_text().split()
    spec["argv"] = ["/nonexistent/prog"]
    out = _run_podexec(tmp_path, spec, timeout=30)
    assert out.returncode == 128 and "failed to start container" in out.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="namespaces and setuid need root")
def test_podexec_keeps_the_image_paths_under_a_volume_over_their_ancestor() -> None:
    # The operator's pod mounts an emptyDir at /tmp: with the repository under /tmp that hid the venv and the
    # container could not start ("No such file or directory: '/tmp/.../.venv/bin/etcdoperator'").
    tmp_path = Path(tempfile.mkdtemp(prefix="nodeagent-unit-"))
    os.chmod(tmp_path, 0o755)
    try:
        _podexec_volume_over_the_repo(tmp_path)
    finally:
        shutil.rmtree(tmp_path)


def _podexec_volume_over_the_repo(tmp_path: Path) -> None:
    top = Path("/", REPO.parts[1])  # /tmp for a clone in /tmp, /work for /work/main: hides the repository
    image = resolve("etcdstore:0.1.0")
    assert image is not None and str(REPO / ".venv") in image.needs and str(REPO / "store") in image.needs
    vols = {}
    for name in ("empty", "at", "below"):
        vols[name] = tmp_path / name
        vols[name].mkdir()
        os.chmod(vols[name], 0o777)
    (vols["at"] / "marker").write_text("the volume at operator/\n")
    (vols["below"] / "marker").write_text("the volume below .venv/\n")
    scratch = f"scratch-{tmp_path.name}"
    script = (
        f"{REPO}/.venv/bin/etcdstore --version | head -1; cat {REPO}/operator/marker {REPO}/.venv/include/marker; "
        f"touch {top}/{scratch} && echo VOLUME-RW; touch {REPO}/store/x 2>/dev/null || echo IMAGE-RO"
    )
    spec = {
        "hostname": "pod-b",
        "uid": 65532,
        "gid": 65532,
        "cwd": "/",
        "argv": ["/bin/sh", "-c", script],
        "env": {"PATH": "/usr/bin:/bin"},
        "mounts": [
            {"source": str(vols["below"]), "target": f"{REPO}/.venv/include", "readOnly": True},
            {"source": str(vols["empty"]), "target": str(top), "readOnly": False},
            {"source": str(vols["at"]), "target": f"{REPO}/operator/", "readOnly": True},
        ],
        "readOnlyRoot": True,
        "image_paths": list(image.needs),
        "masks": masks(),
        "stage": str(tmp_path / "stage"),
        "created_log": str(tmp_path / "created.log"),
    }
    out = _run_podexec(tmp_path, spec, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.splitlines() == [
        "etcdstore Version: 0.1.0",
        "the volume at operator/",  # a volume AT an image path wins, as one below it
        "the volume below .venv/",
        "VOLUME-RW",
        "IMAGE-RO",  # readOnlyRootFilesystem covers the image's paths too
    ]
    # the mount points were made inside the volume, the host is untouched; the agent removes what is logged
    assert (vols["empty"] / scratch).exists() and not (top / scratch).exists()
    rel = REPO.relative_to(top)
    created = set((tmp_path / "created.log").read_text().split())
    assert {str(vols["empty"] / rel / ".venv"), str(vols["empty"] / rel / "store")} <= created
    assert all(c.startswith(str(vols["empty"]) + "/") for c in created), created


async def test_http_https_and_tcp_probe_handlers(tmp_path: Path) -> None:
    import types

    import aiohttp
    from aiohttp import web
    from localkube.nodeagent_pod import Container, PodRuntime
    from localkube.nodeagent_server import _serving_context

    async def ok_handler(_r: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def bad_handler(_r: web.Request) -> web.Response:
        return web.Response(status=503)

    app = web.Application()
    app.router.add_get("/ok", ok_handler)
    app.router.add_get("/bad", bad_handler)
    runner = web.AppRunner(app)
    await runner.setup()
    ctx = _serving_context("n", "127.0.0.1", None, tmp_path)
    sites = [web.TCPSite(runner, "127.0.0.1", 0), web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)]
    for site in sites:
        await site.start()
    plain, tls = (site._server.sockets[0].getsockname()[1] for site in sites)
    http = aiohttp.ClientSession()
    try:
        rt = object.__new__(PodRuntime)  # only what run_handler reads
        rt.ip = "127.0.0.1"
        rt.node = types.SimpleNamespace(agent=types.SimpleNamespace(http=http))
        c = Container({"name": "c", "ports": [{"name": "web", "containerPort": plain}]})
        assert await rt.run_handler(c, {"httpGet": {"path": "/ok", "port": "web"}}, 2) == (True, "")
        ok, why = await rt.run_handler(c, {"httpGet": {"path": "/bad", "port": plain}}, 2)
        assert not ok and "503" in why
        ok, _ = await rt.run_handler(c, {"httpGet": {"path": "/ok", "port": tls, "scheme": "HTTPS"}}, 2)
        assert ok  # the kubelet does not verify the serving certificate
        assert (await rt.run_handler(c, {"tcpSocket": {"port": "web"}}, 2))[0]
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            closed = s.getsockname()[1]
        assert not (await rt.run_handler(c, {"tcpSocket": {"port": closed}}, 2))[0]
    finally:
        await http.close()
        await runner.cleanup()
