"""Client-certificate CN as the user (--client-cert-auth): the same etcdctl session over mutual
TLS against a real etcd 3.4 and against etcdstore, outputs compared.

Without a token the verified certificate's CN is the user; a token, when given, wins.

Our member runs in-process so that, while the member's own client-TLS wiring from flags is
not there yet, the test can hand the client-port mux an SSLContext built from the same files.
"""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import time
from pathlib import Path

import pytest
from authprocs import Step, run_script, step
from pki import PKI
from procs import ETCD_BIN, ETCDCTL_BIN, free_port, have_etcd

from etcdstore.config import parse_args
from etcdstore.server.main import Member

pytestmark = [pytest.mark.etcd, pytest.mark.skipif(not have_etcd(), reason="needs etcd 3.4 binaries")]


def session(pki: PKI) -> list[Step]:
    def as_(cn: str, *args: str) -> Step:
        cert, key = pki.issue(cn)
        return step(*args, "--cacert", str(pki.ca), "--cert", cert, "--key", key)

    return [
        as_("root", "user", "add", "root", "--new-user-password=rootpw"),
        as_("root", "user", "grant-role", "root", "root"),
        as_("root", "role", "add", "r"),
        as_("root", "role", "grant-permission", "r", "readwrite", "k/", "--prefix"),
        as_("root", "user", "add", "alice", "--no-password"),
        as_("root", "user", "grant-role", "alice", "r"),
        as_("root", "put", "k/1", "v"),
        as_("root", "put", "other", "o"),
        as_("root", "auth", "enable"),
        as_("root", "put", "k/2", "v2"),
        as_("root", "user", "list"),
        as_("alice", "get", "k/", "--prefix"),
        as_("alice", "put", "k/3", "v3"),
        as_("alice", "get", "other"),
        as_("alice", "user", "list"),
        as_("alice", "user", "get", "alice"),
        as_("alice", "del", "k/1"),
        as_("mallory", "get", "k/1"),
        as_("mallory", "put", "k/1", "x"),
        as_("alice", "get", "other", "--user", "root:rootpw"),
        as_("alice", "get", "k/2", "--user", "alice:pw"),
        as_("root", "auth", "disable"),
        as_("mallory", "get", "other"),
    ]


def server_context(pki: PKI, cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca))
    ctx.load_cert_chain(cert, key)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    return ctx


def tls_flags(pki: PKI, cert: str, key: str) -> list[str]:
    return ["--cert-file", cert, "--key-file", key, "--trusted-ca-file", str(pki.ca), "--client-cert-auth",
            "--bcrypt-cost", "4"]


def member_flags(name: str, data: Path, client: int, peer: int) -> list[str]:
    url, purl = f"https://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
    return ["--name", name, "--data-dir", str(data), "--listen-client-urls", url, "--advertise-client-urls", url,
            "--listen-peer-urls", purl, "--initial-advertise-peer-urls", purl, "--initial-cluster", f"{name}={purl}"]


def wait_healthy(endpoint: str, pki: PKI, cert: str, key: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + 30
    while True:
        out = subprocess.run([ETCDCTL_BIN, "--endpoints", endpoint, "--cacert", str(pki.ca), "--cert", cert,
                              "--key", key, "endpoint", "health"], capture_output=True, env={"ETCDCTL_API": "3"})
        if out.returncode == 0:
            return
        assert proc is None or proc.poll() is None, "server exited"
        assert time.monotonic() < deadline, out.stderr
        time.sleep(0.2)


async def test_client_certificate_cn_is_the_user(tmp_path: Path) -> None:
    pki = PKI(tmp_path / "pki")
    server_cert, server_key = pki.issue("server", server=True)
    root_cert, root_key = pki.issue("root")
    steps = session(pki)

    # Real etcd 3.4.
    port, peer = free_port(), free_port()
    etcd_ep = f"https://127.0.0.1:{port}"
    with open(tmp_path / "etcd.log", "wb") as log:
        proc = subprocess.Popen([ETCD_BIN, *member_flags("e", tmp_path / "etcd", port, peer),
                                 *tls_flags(pki, server_cert, server_key)], stdout=log, stderr=subprocess.STDOUT)
    try:
        await asyncio.to_thread(wait_healthy, etcd_ep, pki, root_cert, root_key, proc)
        expected = await asyncio.to_thread(run_script, etcd_ep, steps)
    finally:
        proc.kill()
        proc.wait()

    # etcdstore, in-process.
    port, peer = free_port(), free_port()
    our_ep = f"https://127.0.0.1:{port}"
    cfg = parse_args([*member_flags("m", tmp_path / "ours", port, peer), *tls_flags(pki, server_cert, server_key)],
                     environ={})
    m = Member(cfg)
    await m.start()
    try:
        assert m.mux is not None
        if m.mux.tls_context() is None:  # client TLS from flags not wired yet: same files, by hand
            ctx = server_context(pki, server_cert, server_key)
            m.mux.tls_context = lambda: ctx
        await asyncio.to_thread(wait_healthy, our_ep, pki, root_cert, root_key)
        got = await asyncio.to_thread(run_script, our_ep, steps)
    finally:
        await m.stop()

    diffs = [f"{' '.join(s.args[:4])}\n  etcd:      {e}\n  etcdstore: {g}"
             for (s, e), (_, g) in zip(expected, got) if e != g]
    assert not diffs, "\n".join(diffs)
    by_step = [out for _, out in expected]
    assert by_step[9] == (0, ["OK"], [])  # root by certificate, no password given
    assert by_step[13] == (1, [], ["Error: etcdserver: permission denied"])  # alice by certificate
    assert by_step[19][0] == 0  # a token wins over the certificate
