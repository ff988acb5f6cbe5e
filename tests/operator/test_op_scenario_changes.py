"""Integration: TLS, rolling changes (followers first, leader last), refused version skips, pause."""

from __future__ import annotations

import base64

import pytest
from etcdstore.client import TLSConfig
from etcdstore.errors import EtcdError

pytestmark = pytest.mark.etcd


def revisions(world, name: str) -> dict[str, str]:
    return {n: p["metadata"]["labels"]["controller-revision-hash"] for n, p in world.pods(name).items()}


def secret_files(world, secret: str, directory) -> dict[str, str]:
    obj = world.api.get_object("v1/secrets", "default", secret)
    paths = {}
    for key, value in obj["data"].items():
        path = directory / f"{secret}-{key}"
        path.write_bytes(base64.b64decode(value))
        paths[key] = str(path)
    return paths


def restarts_in_order(world, name: str) -> list[str]:
    events = sorted(world.events(name), key=lambda e: e["metadata"]["name"])
    return [e["message"] for e in events if e["reason"] in ("MemberRestarted", "LeaderMoved")]


async def test_auto_tls_refuses_clients_without_certificates_and_rolls_new_certificates(world, tmp_path):
    await world.operator.start()
    await world.create_cluster(
        "sec", {"replicas": 3, "tls": {"client": {"mode": "auto"}, "peer": {"mode": "auto"}}}
    )
    await world.wait_available("sec", 3)
    client_files = secret_files(world, "sec-client-tls", tmp_path)
    with_cert = TLSConfig(
        ca_file=client_files["ca.crt"], cert_file=client_files["tls.crt"], key_file=client_files["tls.key"]
    )
    async with world.client("sec", tls=with_cert) as c:
        await c.put("secret", "s3cr3t")
        members = (await c.member_list()).members
        assert all(u.startswith("https://") for m in members for u in list(m.peerURLs) + list(m.clientURLs))
    # a client with the CA but no certificate of its own is refused...
    async with world.client("sec", tls=TLSConfig(ca_file=client_files["ca.crt"])) as c:
        with pytest.raises(EtcdError):
            await c.get("secret")
    # ...and so is a plaintext client
    async with world.client("sec") as c:
        with pytest.raises(EtcdError):
            await c.get("secret")

    # new certificates (here: the server Secret is lost and re-issued) roll the members one at a time
    before = revisions(world, "sec")
    old_cert = world.api.get_object("v1/secrets", "default", "sec-server-tls")["data"]["tls.crt"]
    await world.harness.delete("v1/secrets", "default", "sec-server-tls")
    await world.wait_for(
        "every member restarted on the new certificate",
        lambda: (r := revisions(world, "sec")) and len(r) == 3 and all(r[p] != before[p] for p in before),
        timeout=120,
    )
    await world.wait_available("sec", 3)
    assert world.api.get_object("v1/secrets", "default", "sec-server-tls")["data"]["tls.crt"] != old_cert
    order = restarts_in_order(world, "sec")
    restarted = [m for m in order if m.startswith("restarting")]
    assert len(restarted) == 3
    assert any(m.startswith("moved leadership") for m in order[: order.index(restarted[-1])]), order
    async with world.client("sec", tls=with_cert) as c:
        assert (await c.get("secret")).kvs[0].value == b"s3cr3t"


async def test_rolling_option_change_refused_version_skip_and_pause(world):
    await world.operator.start()
    await world.create_cluster("roll", {"replicas": 3})
    await world.wait_available("roll", 3)
    async with world.client("roll") as c:
        await c.put("a", "1")
    ids = {m["name"]: m["id"] for m in world.status("roll")["members"]}

    # an option change restarts followers first, then the leader after moving leadership away
    leader_before = world.status("roll")["leader"]
    before = revisions(world, "roll")
    await world.patch_spec("roll", {"options": {"snapshotCount": 5000}})
    await world.wait_for(
        "all members restarted with the new flags",
        lambda: (r := revisions(world, "roll")) and len(r) == 3 and all(r[p] != before[p] for p in before),
        timeout=120,
    )
    await world.wait_available("roll", 3)
    order = restarts_in_order(world, "roll")
    restarted = [m.split()[1] for m in order if m.startswith("restarting")]
    assert len(restarted) == 3 and restarted[-1] == leader_before, order
    assert any(m.startswith(f"moved leadership from {leader_before}") for m in order), order
    assert {m["name"]: m["id"] for m in world.status("roll")["members"]} == ids
    sts = world.api.get_object("apps/v1/statefulsets", "default", "roll")
    assert "--snapshot-count=5000" in sts["spec"]["template"]["spec"]["containers"][0]["args"]

    # skipping a minor version is refused and reported; nothing restarts
    template_before = sts["spec"]["template"]
    revs = revisions(world, "roll")
    await world.patch_spec("roll", {"version": "3.6.0"})
    await world.wait_for(
        "version skip refused",
        lambda: world.condition("roll", "Degraded").get("reason") == "VersionChangeRefused",
    )
    assert "3.4.23 -> 3.6.0" in world.condition("roll", "Degraded")["message"]
    assert world.status("roll")["targetVersion"] == "3.4.23"
    assert (
        world.api.get_object("apps/v1/statefulsets", "default", "roll")["spec"]["template"] == template_before
    )
    assert revisions(world, "roll") == revs
    await world.patch_spec("roll", {"version": "3.4.23"})
    await world.wait_for(
        "refusal cleared", lambda: world.condition("roll", "Degraded").get("status") == "False"
    )

    # paused: a scale change waits until unpaused
    await world.patch_spec("roll", {"paused": True, "replicas": 1})
    await world.wait_for("paused", lambda: world.status("roll").get("phase") == "Paused")
    assert len(world.status("roll")["members"]) == 3
    await world.patch_spec("roll", {"paused": False})
    await world.wait_available("roll", 1)
    async with world.client("roll") as c:
        assert (await c.get("a")).kvs[0].value == b"1"


async def test_authentication_with_root_password_from_a_secret(world):
    await world.apply(
        "v1/secrets",
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "root-pw"},
            "data": {"password": base64.b64encode(b"hunter2").decode()},
        },
    )
    await world.apply(
        "v1/persistentvolumeclaims",
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "bk"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
        },
    )
    await world.operator.start()
    await world.create_cluster(
        "locked",
        {
            "replicas": 1,
            "auth": {"rootPasswordSecret": {"name": "root-pw"}},
            "backup": {"destination": {"pvc": {"claimName": "bk"}}},
        },
    )
    await world.wait_available("locked", 1)
    await world.wait_for(
        "auth enabled", lambda: any(e["reason"] == "AuthEnabled" for e in world.events("locked"))
    )
    async with world.client("locked") as c:
        with pytest.raises(EtcdError):
            await c.put("k", "v")  # no credentials
    async with world.client("locked", user="root", password="wrong") as c:
        with pytest.raises(EtcdError):
            await c.put("k", "v")
    async with world.client("locked", user="root", password="hunter2") as c:
        await c.put("k", "v")
    # the operator keeps working with the credentials (and so do its backup Jobs)
    await world.patch_spec("locked", {"replicas": 2})
    await world.wait_available("locked", 2)
    await world.apply(
        "etcdstore.io/v1alpha1/etcdbackups",
        {
            "apiVersion": "etcdstore.io/v1alpha1",
            "kind": "EtcdBackup",
            "metadata": {"name": "b1"},
            "spec": {"clusterName": "locked"},
        },
    )
    done = await world.wait_for(
        "backup with auth",
        lambda: (
            (world.api.get_object("etcdstore.io/v1alpha1/etcdbackups", "default", "b1") or {})
            .get("status", {})
            .get("phase")
            in ("Succeeded", "Failed")
            and world.api.get_object("etcdstore.io/v1alpha1/etcdbackups", "default", "b1")
        ),
        timeout=60,
    )
    assert done["status"]["phase"] == "Succeeded", done["status"]
    assert done["status"]["location"] == "pvc://bk/default/locked/on-demand/b1.db"


async def test_nospace_alarm_is_recovered(world):
    from etcdstore import errors

    await world.operator.start()
    await world.create_cluster("full", {"replicas": 3, "options": {"quotaBackendBytes": 2 * 1024 * 1024}})
    await world.wait_available("full", 3)
    blob = b"x" * (256 * 1024)
    async with world.client("full") as c:
        with pytest.raises(EtcdError) as exc:
            for _ in range(64):  # overwrite one key: history fills the backend
                await c.put("big", blob)
        assert exc.value == errors.NO_SPACE
    recovered = await world.wait_for(
        "space recovered",
        lambda: [e for e in world.events("full") if e["reason"] == "SpaceRecovered"],
        timeout=90,
    )
    assert "defragmented" in recovered[0]["message"]
    await world.wait_for("alarm gone", lambda: world.condition("full", "Degraded").get("status") == "False")
    async with world.client("full") as c:
        assert not (await c.alarm_list()).alarms
        await c.put("small", "works again")
        assert (await c.get("big")).kvs[0].value == blob
