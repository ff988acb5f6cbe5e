"""Peer TLS rolled to a new CA (trust both, reissue, drop the old CA), as the operator does it:
the cluster keeps a leader, all three voters, and serves writes; members whose files changed
without a restart redial with the current files."""

from __future__ import annotations

import datetime
import ipaddress
import json
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from testlib import Cluster, Member, etcdctl, have_etcd, wait_serving

pytestmark = pytest.mark.skipif(not have_etcd(), reason="etcdctl 3.4 not installed")


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(cn: str):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def make_leaf(ca, cn: str):
    ca_key, ca_cert = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def pem(cert) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def write_member_files(d: Path, leaf, cas: list) -> None:
    key, cert = leaf
    d.mkdir(parents=True, exist_ok=True)
    for name, data in (
        ("peer.pem", pem(cert)),
        ("ca.pem", b"".join(pem(c[1]) for c in cas)),
        (
            "peer-key.pem",
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
        ),
    ):
        tmp = d / (name + ".tmp")
        tmp.write_bytes(data)
        tmp.rename(d / name)


def healthy(c: Cluster) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            st = json.loads(etcdctl(c.endpoints, "endpoint", "status", "-w", "json").stdout)
            members = json.loads(etcdctl(c.endpoints, "member", "list", "-w", "json").stdout)["members"]
            leaders = {s["Status"]["leader"] for s in st}
            if (
                len(st) == 3
                and len(leaders) == 1
                and 0 not in leaders
                and len(members) == 3
                and not any(m.get("isLearner") for m in members)
            ):
                etcdctl(c.endpoints, "put", "rolled", str(time.time()))
                for m in c.members:  # every member serves linearizable reads
                    etcdctl([m.endpoint], "get", "rolled")
                return
        except RuntimeError:
            pass
        assert time.monotonic() < deadline, "cluster not healthy after a TLS roll step"
        time.sleep(0.3)


def test_peer_ca_rotation_one_member_at_a_time(tmp_path, monkeypatch):
    ca1, ca2 = make_ca("ca-one"), make_ca("ca-two")
    dirs = [tmp_path / f"pki{i}" for i in range(3)]
    for d in dirs:
        write_member_files(d, make_leaf(ca1, "member"), [ca1])
    monkeypatch.setattr(Member, "peer_url", property(lambda self: f"https://127.0.0.1:{self.peer_port}"))
    orig_command = Member.command

    def command(self: Member) -> list[str]:
        d = dirs[int(self.name[1:])]
        return orig_command(self) + [
            "--peer-cert-file",
            str(d / "peer.pem"),
            "--peer-key-file",
            str(d / "peer-key.pem"),
            "--peer-trusted-ca-file",
            str(d / "ca.pem"),
            "--peer-client-cert-auth",
        ]

    monkeypatch.setattr(Member, "command", command)
    with Cluster.start(tmp_path / "c", 3, binary="etcdstore") as c:
        healthy(c)
        # 1. Trust both CAs: files change under running members, no restart (reloaded live).
        for i in range(3):
            write_member_files(dirs[i], make_leaf(ca1, "member"), [ca1, ca2])
        time.sleep(1.5)
        healthy(c)
        # 2. Reissue from CA2, 3. drop CA1: one member at a time, followers first, the leader last.
        # The others did not restart after step 1: they must redial with the files as they are now.
        for step in (
            lambda i: write_member_files(dirs[i], make_leaf(ca2, "member"), [ca1, ca2]),
            lambda i: write_member_files(dirs[i], make_leaf(ca2, "member"), [ca2]),
        ):
            order = sorted(range(3), key=lambda i: i == c.leader_index())
            for i in order:
                step(i)
                m = c.members[i]
                m.kill()
                m.spawn()
                wait_serving([m])
                healthy(c)
