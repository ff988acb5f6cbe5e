"""Every socket a member listens on is one its flags declare, and each refuses a client without a
certificate when the flags ask for client-certificate auth.

The member is started with TLS and client-certificate auth on every URL it has (client, peer,
metrics). Its listening sockets are read from the kernel (/proc/<pid>/net/{tcp,tcp6} matched to
the socket inodes in /proc/<pid>/fd, for the process and its children), so a listener opened by
any library counts, declared or not. Each one is then tried as an attacker would: etcdctl in
plain text, etcdctl over TLS without a certificate, plain HTTP, and HTTP over TLS without a
certificate. The same probes with the client certificate are answered (so the probes can tell).
"""

from __future__ import annotations

import base64
import http.client
import ipaddress
import json
import os
import socket
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from testlib import CA, HOST, Member, etcdctl, free_port, have_etcd

pytestmark = pytest.mark.skipif(not have_etcd(), reason="etcdctl 3.4 not installed")

_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp
_UNIX_ACCEPTCON = 0x10000  # __SO_ACCEPTCON: a listening unix socket


@dataclass
class _TLSPeerMember(Member):
    """A member whose peer URL is https too."""

    @property
    def peer_url(self) -> str:
        return f"https://{HOST}:{self.peer_port}"


def _pids(pid: int) -> list[int]:
    """The process and all its descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except FileNotFoundError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{p}/task/{tid}/children") as fh:
                    todo.extend(int(c) for c in fh.read().split())
            except FileNotFoundError:
                pass
    return out


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def _address(hex_addr: str) -> str:
    raw = bytes.fromhex(hex_addr)
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw[::-1]))
    # /proc prints an IPv6 address as four host-order 32-bit words.
    addr = ipaddress.IPv6Address(b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4)))
    return str(addr.ipv4_mapped or addr)


def sockets_of(pid: int) -> tuple[set[tuple[str, int]], list[str]]:
    """(host, port) of every listening TCP socket of the process tree, and a description of any
    other socket that accepts traffic unasked (listening unix sockets, bound UDP sockets)."""
    tcp: set[tuple[str, int]] = set()
    other: list[str] = []
    for p in _pids(pid):
        try:
            inodes = _socket_inodes(p)
        except FileNotFoundError:
            continue
        for table in ("tcp", "tcp6", "udp", "udp6"):
            with open(f"/proc/{p}/net/{table}") as fh:
                rows = fh.read().splitlines()[1:]
            for row in rows:
                cols = row.split()
                if int(cols[9]) not in inodes:
                    continue
                hex_addr, hex_port = cols[1].split(":")
                local = (_address(hex_addr), int(hex_port, 16))
                if table.startswith("tcp"):
                    if cols[3] == _LISTEN:
                        tcp.add(local)
                elif cols[2].split(":")[0].strip("0") == "":  # not connected: receives from anyone
                    other.append(f"{table} {local}")
        with open(f"/proc/{p}/net/unix") as fh:
            for row in fh.read().splitlines()[1:]:
                cols = row.split()
                if int(cols[6]) in inodes and int(cols[3], 16) & _UNIX_ACCEPTCON:
                    other.append(f"unix {cols[7] if len(cols) > 7 else '(anonymous)'}")
    return tcp, other


def _http_over(sock: socket.socket) -> bytes:
    """Send a plain HTTP/1.1 request on a connected socket; the first bytes of the answer."""
    sock.sendall(f"GET /health HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
    return sock.recv(64)


def plain_http(port: int) -> bytes:
    """What a plain-text HTTP client gets back (b"" or an exception's name when refused)."""
    try:
        with socket.create_connection((HOST, port), timeout=5) as s:
            return _http_over(s)
    except OSError as e:
        return type(e).__name__.encode()


def _issue(ca: CA, cn: str, *, server: bool = False) -> tuple[str, str]:
    """(certificate, key) paths for `cn`, good for client (and with `server`, server) authentication."""
    cert, key = ca.issue(cn, cn, server=server)
    return str(cert), str(key)


def tls_http(port: int, ca: Path, cert: tuple[str, str] | None) -> bytes:
    """What an HTTPS client that trusts the CA gets back, with or without a client certificate."""
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.set_alpn_protocols(["http/1.1"])
    if cert is not None:
        ctx.load_cert_chain(*cert)
    try:
        with (
            socket.create_connection((HOST, port), timeout=5) as raw,
            ctx.wrap_socket(raw, server_hostname=HOST) as s,
        ):
            return _http_over(s)
    except (OSError, ssl.SSLError) as e:
        return type(e).__name__.encode()


def gateway_range(port: int, ca: Path, cert: tuple[str, str]) -> bytes:
    """A JSON gateway request over TLS with the client certificate; the first bytes of the answer."""
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.load_cert_chain(*cert)
    body = b'{"key":"aw=="}'
    with (
        socket.create_connection((HOST, port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=HOST) as s,
    ):
        s.sendall(
            b"POST /v3/kv/range HTTP/1.1\r\nHost: %s\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
            % (HOST.encode(), len(body), body)
        )
        return s.recv(64)


def test_every_listener_is_declared_and_refuses_clients_without_a_certificate(tmp_path: Path) -> None:
    ca = CA(tmp_path / "pki")
    server_cert, server_key = _issue(ca, "member", server=True)
    client = _issue(ca, "alice")
    client_port, peer_port, metrics_port = free_port(), free_port(), free_port()
    m = _TLSPeerMember(
        name="s0",
        data_dir=tmp_path / "s0.etcd",
        client_port=client_port,
        peer_port=peer_port,
        scheme="https",
        tls_args=[
            "--cert-file",
            server_cert,
            "--key-file",
            server_key,
            "--trusted-ca-file",
            str(ca.cert),
            "--client-cert-auth",
            "--peer-cert-file",
            server_cert,
            "--peer-key-file",
            server_key,
            "--peer-trusted-ca-file",
            str(ca.cert),
            "--peer-client-cert-auth",
            "--listen-metrics-urls",
            f"https://{HOST}:{metrics_port}",
        ],
    )
    declared = {(HOST, client_port), (HOST, peer_port), (HOST, metrics_port)}
    with_cert = ["--cacert", str(ca.cert), "--cert", client[0], "--key", client[1], "--dial-timeout", "5s"]
    plain = ["--dial-timeout", "2s", "--command-timeout", "3s"]
    no_cert = ["--cacert", str(ca.cert), *plain]
    m.spawn()
    try:
        assert m.proc is not None
        deadline = time.monotonic() + 60
        while True:  # serving, and every declared listener open
            ok = etcdctl([f"https://{m.endpoint}"], *with_cert, "put", "k", "v", check=False).returncode == 0
            if ok and declared <= sockets_of(m.proc.pid)[0]:
                break
            assert m.running, m.log_tail()
            assert time.monotonic() < deadline, m.log_tail()
            time.sleep(0.2)
        # Use the JSON gateway once, so anything it opens lazily is open now.
        assert gateway_range(client_port, ca.cert, client).startswith(b"HTTP/1.1 200")

        listening, other = sockets_of(m.proc.pid)
        undeclared = sorted(listening - declared)
        problems = [f"listening on {h}:{p}, which no flag declares" for h, p in undeclared]
        problems += [f"{desc}: accepts traffic and no flag declares it" for desc in other]
        # etcdctl in plain text, and over TLS without a certificate: no answer (run side by side,
        # each waits out its timeouts).
        probes = [
            (port, label, ep, args)
            for _, port in sorted(listening)
            for label, ep, args in (
                ("etcdctl over plain text", f"http://{HOST}:{port}", plain),
                ("etcdctl over TLS without a certificate", f"https://{HOST}:{port}", no_cert),
            )
        ]
        with ThreadPoolExecutor(len(probes)) as pool:
            outs = list(
                pool.map(lambda probe: etcdctl([probe[2]], *probe[3], "get", "k", check=False), probes)
            )
        for (port, label, _, _), out in zip(probes, outs, strict=True):
            if out.returncode == 0:
                problems.append(f"{port}: {label} was served: {out.stdout!r}")
        for _, port in sorted(listening):
            # HTTP in plain text, and over TLS without a certificate: no HTTP answer.
            for label, answer in (
                ("plain HTTP", plain_http(port)),
                ("HTTPS without a certificate", tls_http(port, ca.cert, None)),
            ):
                if answer.startswith(b"HTTP/"):
                    problems.append(f"{port}: {label} was answered: {answer!r}")
        assert not problems, "\n".join(problems)

        # The probes can tell: with the certificate, the same ones are served.
        assert etcdctl([f"https://{m.endpoint}"], *with_cert, "get", "k").stdout == "k\nv\n"
        for port in (client_port, metrics_port):
            assert tls_http(port, ca.cert, client).startswith(b"HTTP/1.1 200"), port
    finally:
        m.kill()


def _gateway(
    port: int, ca: Path, cert: tuple[str, str], path: str, body: dict, headers: dict[str, str] | None = None
) -> tuple[int, dict]:
    """A JSON gateway call over TLS with exactly these headers (http.client adds no Accept)."""
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.load_cert_chain(*cert)
    conn = http.client.HTTPSConnection(HOST, port, context=ctx, timeout=10)
    try:
        conn.request("POST", path, body=json.dumps(body), headers=headers or {})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def test_the_gateway_acts_as_its_caller(tmp_path: Path) -> None:
    """The in-process gateway carries the caller's certificate CN and token to the services: the
    CN is the user when the request has no Accept header; with one (curl always sends it), etcd's
    rule applies and the CN is ignored (etcd's gateway is a gRPC client with its own certificate
    and etcd drops that certificate's CN when grpcgateway-accept metadata is present)."""
    ca = CA(tmp_path / "pki")
    server_cert, server_key = _issue(ca, "member", server=True)
    root, alice, mallory = _issue(ca, "root"), _issue(ca, "alice"), _issue(ca, "mallory")
    m = Member(
        name="s0",
        data_dir=tmp_path / "s0.etcd",
        client_port=free_port(),
        peer_port=free_port(),
        scheme="https",
        tls_args=[
            "--cert-file",
            server_cert,
            "--key-file",
            server_key,
            "--trusted-ca-file",
            str(ca.cert),
            "--client-cert-auth",
            "--bcrypt-cost",
            "4",
        ],
    )
    ep = [f"https://{m.endpoint}"]

    def as_(who: tuple[str, str], *args: str) -> str:
        return etcdctl(
            ep, "--cacert", str(ca.cert), "--cert", who[0], "--key", who[1], "--dial-timeout", "5s", *args
        ).stdout

    m.spawn()
    try:
        deadline = time.monotonic() + 60
        while (
            etcdctl(
                ep,
                "--cacert",
                str(ca.cert),
                "--cert",
                root[0],
                "--key",
                root[1],
                "--dial-timeout",
                "2s",
                "endpoint",
                "health",
                check=False,
            ).returncode
            != 0
        ):
            assert m.running, m.log_tail()
            assert time.monotonic() < deadline, m.log_tail()
            time.sleep(0.2)
        as_(root, "user", "add", "root", "--new-user-password=rootpw")
        as_(root, "user", "grant-role", "root", "root")
        as_(root, "role", "add", "r")
        as_(root, "role", "grant-permission", "r", "readwrite", "k/", "--prefix")
        as_(root, "user", "add", "alice", "--no-password")
        as_(root, "user", "grant-role", "alice", "r")
        as_(root, "put", "k/1", "v1")
        as_(root, "put", "other", "o")
        as_(root, "auth", "enable")
        port = m.client_port
        k1 = {"key": base64.b64encode(b"k/1").decode()}
        other = {"key": base64.b64encode(b"other").decode()}

        # The CN is the user: alice reads k/1, but not "other"; mallory (no such user) nothing.
        status, got = _gateway(port, ca.cert, alice, "/v3/kv/range", k1)
        assert status == 200 and base64.b64decode(got["kvs"][0]["value"]) == b"v1", got
        status, got = _gateway(port, ca.cert, alice, "/v3/kv/range", other)
        assert (status, got["message"]) == (403, "etcdserver: permission denied"), got
        status, got = _gateway(port, ca.cert, mallory, "/v3/kv/range", k1)
        assert status != 200, got
        # With an Accept header the CN does not count (etcd 3.4's rule for gateway requests).
        status, got = _gateway(port, ca.cert, alice, "/v3/kv/range", k1, {"Accept": "*/*"})
        assert status != 200, got
        # A token is the user whatever the certificate.
        status, got = _gateway(
            port, ca.cert, mallory, "/v3/auth/authenticate", {"name": "root", "password": "rootpw"}
        )
        assert status == 200, got
        status, got = _gateway(
            port, ca.cert, mallory, "/v3/kv/range", other, {"Authorization": got["token"], "Accept": "*/*"}
        )
        assert status == 200 and base64.b64decode(got["kvs"][0]["value"]) == b"o", got
        # And the gRPC path agrees on the CN.
        assert as_(alice, "get", "k/1") == "k/1\nv1\n"
    finally:
        m.kill()
