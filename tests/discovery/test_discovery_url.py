"""--discovery against a real discovery service (Debian's etcd-discovery over a real etcd 3.4),
with real etcd 3.4 given the same flags as the oracle."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from etcdstore.membership import member_id
from testlib import Cluster, Member, etcdctl, eventually, free_port, have_etcd, wait_serving

pytestmark = pytest.mark.skipif(not have_etcd(), reason="needs Debian's etcd 3.4 (etcd-server, etcd-client)")


@dataclass
class DiscoveryMember(Member):
    """A member bootstrapped by --discovery: no --initial-cluster flag at all."""

    discovery: str = ""
    fallback: str = ""

    def command(self) -> list[str]:
        cmd = super().command()
        i = cmd.index("--initial-cluster")
        del cmd[i : i + 2]
        i = cmd.index("--initial-cluster-token")
        del cmd[i : i + 2]
        cmd += ["--discovery", self.discovery]
        if self.fallback:
            cmd += ["--discovery-fallback", self.fallback]
        return cmd


def members(base: Path, binary: str, durl: str, names: list[str], **kw) -> list[DiscoveryMember]:
    return [
        DiscoveryMember(
            name=n,
            data_dir=base / binary / f"{n}-{i}.etcd",
            client_port=free_port(),
            peer_port=free_port(),
            binary=binary,
            discovery=durl,
            **kw,
        )
        for i, n in enumerate(names)
    ]


def stop_all(ms: list[Member]) -> None:
    for m in ms:
        m.kill()


def member_list(endpoint: str) -> list[dict]:
    return json.loads(etcdctl(endpoint, "member", "list", "-w", "json").stdout)["members"]


def logged(m: Member) -> str:
    """The member's log so far; raises (ending an `eventually`) once the member exited."""
    text = m.log_path.read_text(errors="replace")
    if not m.running:
        raise RuntimeError(f"{m.binary} {m.name} exited:\n{text[-3000:]}")
    return text


def exit_output(m: Member, timeout: float = 60.0) -> tuple[int, str]:
    """Wait for a member that must fail; its exit status and log."""
    assert m.proc is not None
    try:
        rc = m.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        m.kill()
        raise AssertionError(f"{m.binary} {m.name} did not exit:\n{m.log_tail()}") from None
    # zap's JSON escapes quotes; the messages are compared as text.
    return rc, m.log_path.read_text(errors="replace").replace('\\"', '"')


@pytest.mark.parametrize("binary", ["etcdstore", "etcd"])
def test_three_members_form_a_cluster(tmp_path, discovery_service, binary):
    """Three members given only --discovery form one cluster; the member IDs are the keys they
    registered, derived from each member's peer URLs and the discovery URL (etcd's token)."""
    durl = discovery_service.new_token(3)
    ms = members(tmp_path, binary, durl, ["d0", "d1", "d2"])
    try:
        for m in ms:
            m.spawn()
        wait_serving(ms, timeout=90)
        listed = member_list(ms[0].endpoint)
        assert sorted(m["name"] for m in listed) == ["d0", "d1", "d2"]
        assert sorted(u for m in listed for u in m["peerURLs"]) == sorted(m.peer_url for m in ms)
        registered = discovery_service.registered(durl)
        assert sorted(registered) == sorted(f"{m['ID']:x}" for m in listed)
        for m in ms:
            assert registered[f"{member_id([m.peer_url], durl):x}"] == f"{m.name}={m.peer_url}"
        etcdctl([m.endpoint for m in ms], "put", "k", "v")
        assert etcdctl(ms[2].endpoint, "get", "k", "--print-value-only").stdout.strip() == "v"
        # A restart uses the data dir and never asks the discovery service again.
        ms[1].kill()
        ms[1].spawn()
        wait_serving([ms[1]], timeout=60)
        assert len(member_list(ms[1].endpoint)) == 3
    finally:
        stop_all(ms)


def test_cluster_ids_match_etcd(tmp_path, discovery_service):
    """The same peer URLs and discovery URL give etcd's member IDs and cluster ID."""
    ids = {}
    for binary in ("etcd", "etcdstore"):
        durl = discovery_service.new_token(1)
        (m,) = members(tmp_path, binary, durl, ["solo"])
        try:
            m.spawn()
            wait_serving([m], timeout=60)
            st = json.loads(etcdctl(m.endpoint, "endpoint", "status", "-w", "json").stdout)[0]["Status"]
            ids[binary] = (st["header"]["member_id"], member_id([m.peer_url], durl))
        finally:
            m.kill()
    for binary, (got, derived) in ids.items():
        assert got == derived, binary


@pytest.mark.parametrize("fallback", ["exit", "proxy"])
def test_full_cluster(tmp_path, discovery_service, fallback):
    """A member arriving when `size` members registered: etcd's full-cluster error, same as etcd's.
    With --discovery-fallback=proxy (the default) etcd 3.4 becomes a v2 proxy; etcdstore has none,
    logs etcd's message and exits 1."""
    outputs = {}
    for binary in ("etcd", "etcdstore"):
        durl = discovery_service.new_token(1)
        first, late = members(tmp_path / fallback, binary, durl, ["f0", "f1"], fallback=fallback)
        try:
            first.spawn()
            wait_serving([first], timeout=60)
            late.spawn()
            if binary == "etcd" and fallback == "proxy":
                # etcd 3.4 keeps running as a v2 proxy: wait for its message, then stop it.
                eventually(
                    lambda m=late: "falling back to proxy" in logged(m), 60, message="etcd's proxy fallback"
                )
                outputs[binary] = (None, late.log_path.read_text(errors="replace"))
            else:
                outputs[binary] = exit_output(late)
            assert list(discovery_service.registered(durl).values()) == [f"f0={first.peer_url}"]
        finally:
            first.kill()
            late.kill()
    rc, text = outputs["etcdstore"]
    assert rc == 1, text
    if fallback == "exit":
        etcd_rc, etcd_text = outputs["etcd"]
        assert etcd_rc != 0
        for out in (text, etcd_text):
            assert "failed to join discovery cluster (discovery: cluster is full)" in out
            assert "failed to bootstrap; discovery token was already used" in out
    else:
        for out in (text, outputs["etcd"][1]):
            assert '"msg":"discovery cluster is full, falling back to proxy"' in out
        assert "etcdstore has no v2 proxy" in text


def _run_to_exit(tmp_path: Path, binary: str, extra: list[str], name: str = "e0") -> tuple[int, str]:
    m = Member(
        name=name,
        data_dir=tmp_path / binary / f"{name}.etcd",
        client_port=free_port(),
        peer_port=free_port(),
        binary=binary,
        extra_args=extra,
    )
    m.spawn()
    return exit_output(m)


def test_discovery_with_initial_cluster_is_refused_as_etcd(tmp_path, discovery_service):
    durl = discovery_service.new_token(3)
    for binary in ("etcd", "etcdstore"):
        rc, out = _run_to_exit(
            tmp_path, binary, ["--discovery", durl]
        )  # Member always passes --initial-cluster
        assert rc != 0
        assert (
            'multiple discovery or bootstrap flags are set. Choose one of "initial-cluster", "discovery" or '
            '"discovery-srv"'
        ) in out, binary


def test_size_key_missing_as_etcd(tmp_path, discovery_service):
    """A discovery URL the service never created (no _config/size). etcd 3.4 means to say
    ErrSizeNotFound but says the v2 error itself (its type check misses): the same words here."""
    for binary in ("etcd", "etcdstore"):
        durl = f"{discovery_service.url}/{'0' * 32}"
        m = DiscoveryMember(
            name="x",
            data_dir=tmp_path / binary / "x.etcd",
            client_port=free_port(),
            peer_port=free_port(),
            binary=binary,
            discovery=durl,
            fallback="exit",
        )
        m.spawn()
        rc, out = exit_output(m)
        assert rc != 0
        assert (
            "failed to join discovery cluster (100: Key not found (/_etcd/registry/" + "0" * 32 + ") ["
        ) in out, binary
        assert '"msg":"failed to bootstrap; discovery token was already used"' in out, binary


def test_duplicate_name_as_etcd(tmp_path, discovery_service):
    """Two members of one name under a token of size 2: both get etcd's ErrDuplicateName."""
    for binary in ("etcd", "etcdstore"):
        durl = discovery_service.new_token(2)
        ms = members(tmp_path, binary, durl, ["same", "same"], fallback="exit")
        try:
            for m in ms:
                m.spawn()
            for m in ms:
                rc, out = exit_output(m)
                assert rc != 0
                assert "failed to join discovery cluster (discovery: found duplicate name)" in out, binary
                assert "member with duplicated name has already been registered" in out, binary
        finally:
            stop_all(ms)


def test_duplicate_id_after_a_lost_data_dir(tmp_path, discovery_service):
    """A member that registered, lost its data dir and comes back: etcd's ErrDuplicateID advice."""
    outs = {}
    for binary in ("etcd", "etcdstore"):
        durl = discovery_service.new_token(1)
        (m,) = members(tmp_path, binary, durl, ["again"], fallback="exit")
        m.spawn()
        wait_serving([m], timeout=60)
        m.kill()
        shutil.rmtree(m.data_dir)
        m.spawn()
        outs[binary] = exit_output(m)
    for binary, (rc, out) in outs.items():
        assert rc != 0
        assert "member has been registered with discovery service" in out, binary
        assert "discovery: found duplicate id" in out, binary


def test_flags_without_a_service(tmp_path):
    """The flags parse as etcd's, with etcd's error for a bad --discovery-fallback."""
    for binary in ("etcd", "etcdstore"):
        rc, out = _run_to_exit(tmp_path, binary, ["--discovery-fallback", "maybe"])
        assert rc != 0
        assert 'invalid value "maybe" for flag -' in out and "discovery-fallback: invalid value" in out, (
            binary
        )


def test_service_down_then_up(tmp_path, discovery_service):
    """The service unreachable at first: the member retries with etcd's backoff and joins once it is back."""
    durl = discovery_service.new_token(1)
    (m,) = members(tmp_path, "etcdstore", durl, ["late"], fallback="exit")
    discovery_service.stop()
    try:
        m.spawn()
        eventually(lambda: "retry connecting to discovery service" in logged(m), 60, message="a retry")
        discovery_service.start()
        wait_serving([m], timeout=60)
        assert discovery_service.registered(durl) == {
            f"{member_id([m.peer_url], durl):x}": f"late={m.peer_url}"
        }
    finally:
        m.kill()
        if discovery_service.proc is None:
            discovery_service.start()


def test_service_storing_into_etcdstore(tmp_path, discovery_service):
    """The discovery service can keep its tokens in etcdstore (--enable-v2) instead of etcd: real etcd
    and etcdstore members bootstrap through it."""
    store = Cluster.start(tmp_path / "store", size=1, binary="etcdstore", extra_args=["--enable-v2"])
    service = type(discovery_service)(
        discovery_service.binary, free_port(), store.members[0].client_url, tmp_path / "discovery.log"
    )
    try:
        service.start()
        for binary in ("etcd", "etcdstore"):
            durl = service.new_token(2)
            ms = members(tmp_path, binary, durl, ["v0", "v1"])
            try:
                for m in ms:
                    m.spawn()
                wait_serving(ms, timeout=90)
                assert sorted(m["name"] for m in member_list(ms[1].endpoint)) == ["v0", "v1"]
                assert len(service.registered(durl)) == 2
            finally:
                stop_all(ms)
    finally:
        service.stop()
        store.close()


def test_discovery_proxy(tmp_path, discovery_service):
    """--discovery-proxy: the discovery traffic goes through a real HTTP proxy (Debian's tinyproxy).
    Only etcdstore: etcd 3.4's Go client reuses the connection tinyproxy closed after each answer and
    fails its PUT with "failed to join discovery cluster (EOF)" (seen here; docs/discovery.md)."""
    import importlib.util

    # tests/discovery/conftest.py by path: another directory's conftest may hold the name `conftest`
    spec = importlib.util.spec_from_file_location(
        "discovery_conftest", Path(__file__).with_name("conftest.py")
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, mod)  # its dataclasses look their module up there
    spec.loader.exec_module(mod)
    need = mod.need

    port = free_port()
    conf = tmp_path / "tinyproxy.conf"
    conf.write_text(
        f"Port {port}\nListen 127.0.0.1\nTimeout 600\nLogLevel Info\nMaxClients 50\nAllow 127.0.0.1\n"
    )
    log = tmp_path / "tinyproxy.log"
    with open(log, "wb") as out:
        proxy = subprocess.Popen(
            [need("tinyproxy", "tinyproxy-bin"), "-d", "-c", str(conf)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        for binary in ("etcdstore",):
            durl = discovery_service.new_token(1)
            (m,) = members(tmp_path, binary, durl, ["viaproxy"])
            m.extra_args += ["--discovery-proxy", f"http://127.0.0.1:{port}"]
            try:
                m.spawn()
                wait_serving([m], timeout=60)
            finally:
                m.kill()
            token = durl.rsplit("/", 1)[1]
            requests = [line for line in log.read_text(errors="replace").splitlines() if "Request" in line]
            assert any(f"GET {discovery_service.url}/{token}/_config/size" in r for r in requests), binary
            assert any(f"PUT {discovery_service.url}/{token}/" in r for r in requests), binary
    finally:
        proxy.kill()
        proxy.wait()


def test_discovery_url_on_an_etcd_directly(tmp_path, discovery_service):
    """A discovery URL that is a directory of an etcd's v2 key space (no discovery service in between),
    set up by hand as etcd's documents show (`curl -X PUT .../_config/size -d value=2`)."""
    import urllib.parse
    import urllib.request

    for binary in ("etcd", "etcdstore"):
        durl = f"{discovery_service.etcd_endpoint}/v2/keys/by-hand-{binary}-{free_port()}"
        body = urllib.parse.urlencode({"value": "2"}).encode()
        urllib.request.urlopen(
            urllib.request.Request(f"{durl}/_config/size", data=body, method="PUT"), timeout=10
        )
        ms = members(tmp_path, binary, durl, ["h0", "h1"])
        try:
            for m in ms:
                m.spawn()
            wait_serving(ms, timeout=90)
            assert sorted(m["name"] for m in member_list(ms[0].endpoint)) == ["h0", "h1"]
        finally:
            stop_all(ms)
