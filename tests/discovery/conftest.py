"""Real discovery services for the discovery tests.

- `discovery_service`: Debian's `etcd-discovery` (discovery.etcd.io, the public discovery
  service's code) storing into a real etcd 3.4 with the v2 API; `new_token(size)` asks it for a
  discovery URL as a user would (`curl <service>/new?size=3`).
- `dns`: a network namespace of our own whose /etc/resolv.conf (bind-mounted by `ip netns exec`
  from /etc/netns/<ns>/resolv.conf) points at a real DNS server, Debian's dnsmasq, on
  127.0.0.53:53 inside it; members and etcdctl run inside with `ip netns exec`.

The packages come from tests/run (apt-get); when one is missing the fixture installs it and skips,
saying why, only if that fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from testlib import ETCDCTL_BIN, HOST, Cluster, eventually, free_port

DISCOVERY_BIN = "discovery.etcd.io"


def need(binary: str, package: str) -> str:
    """The binary's path; installs its Debian package when missing, skips (with the reason) if it cannot."""
    path = shutil.which(binary) or (f"/usr/sbin/{binary}" if os.path.exists(f"/usr/sbin/{binary}") else None)
    if path:
        return path
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        done = subprocess.run(
            sudo + ["apt-get", "install", "-y", "-qq", package],
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
            env=env,
        )
        reason = done.stderr.strip()[-300:]
    except (OSError, subprocess.TimeoutExpired) as e:
        reason = str(e)
    path = shutil.which(binary) or (f"/usr/sbin/{binary}" if os.path.exists(f"/usr/sbin/{binary}") else None)
    if not path:
        pytest.skip(
            f"{binary} (Debian package {package}) is not installed and apt-get could not install it: {reason}"
        )
    return path


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen, log: Path) -> None:
    """eventually(predicate), failing at once (with the log) if the process exits first."""

    def check():
        if proc.poll() is not None:
            raise RuntimeError(f"{what}: process exited {proc.returncode}\n{log.read_text(errors='replace')}")
        return predicate()

    eventually(check, timeout, 0.1, message=what)


@dataclass
class DiscoveryService:
    """discovery.etcd.io on 127.0.0.1:`port`, storing into the etcd at `etcd_endpoint`."""

    binary: str
    port: int
    etcd_endpoint: str
    log: Path
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> None:
        with open(self.log, "ab") as out:
            # The package's binary reads /etc/etcd-discovery/etcd-discovery.conf for defaults; the flags win.
            self.proc = subprocess.Popen(
                [self.binary, "-e", self.etcd_endpoint, "-h", self.url, "-a", f"{HOST}:{self.port}"],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

        def up() -> bool:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False

        wait_for(up, 30, "discovery.etcd.io serving", self.proc, self.log)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def new_token(self, size: int) -> str:
        with urllib.request.urlopen(f"{self.url}/new?size={size}", timeout=10) as resp:
            return resp.read().decode().strip()

    def registered(self, durl: str) -> dict[str, str]:
        """The members registered under a discovery URL: {key's last part: value}."""
        with urllib.request.urlopen(durl, timeout=10) as resp:
            doc = json.load(resp)
        return {
            n["key"].rsplit("/", 1)[-1]: n.get("value", "")
            for n in doc["node"].get("nodes", [])
            if not n["key"].endswith("/_config")
        }


@pytest.fixture(scope="module")
def discovery_service(tmp_path_factory) -> Iterator[DiscoveryService]:
    binary = need(DISCOVERY_BIN, "etcd-discovery")
    base = tmp_path_factory.mktemp("discovery-service")
    store = Cluster.start(base, size=1, binary="etcd", extra_args=["--enable-v2"])
    service = DiscoveryService(binary, free_port(), store.members[0].client_url, base / "discovery.log")
    try:
        service.start()
        yield service
    finally:
        service.stop()
        store.close()


# ---- a DNS server in a network namespace -----------------------------------------------------------


@dataclass
class NetnsDNS:
    ns: str
    base: Path
    procs: list[subprocess.Popen] = field(default_factory=list)

    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.ns]

    def run(self, *cmd: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
        return subprocess.run(
            self.prefix() + list(cmd),
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
            env=dict(os.environ, ETCDCTL_API="3"),
        )

    def spawn(self, cmd: list[str], log: Path) -> subprocess.Popen:
        with open(log, "ab") as out:
            p = subprocess.Popen(
                self.prefix() + cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.procs.append(p)
        return p

    def etcdctl(self, endpoint: str, *args: str) -> subprocess.CompletedProcess:
        return self.run(ETCDCTL_BIN, "--endpoints", endpoint, "--command-timeout", "5s", *args)


@pytest.fixture(scope="module")
def dns(tmp_path_factory) -> Iterator[NetnsDNS]:
    dnsmasq = need("dnsmasq", "dnsmasq-base")
    if os.geteuid() != 0:
        pytest.skip("a network namespace with its own resolv.conf needs root (ip netns add)")
    base = tmp_path_factory.mktemp("srv")
    ns = f"esd-{uuid.uuid4().hex[:8]}"
    etc = Path("/etc/netns") / ns
    subprocess.run(["ip", "netns", "add", ns], check=True)
    env = NetnsDNS(ns, base)
    try:
        etc.mkdir(parents=True)
        (etc / "resolv.conf").write_text("nameserver 127.0.0.53\n")
        subprocess.run(env.prefix() + ["ip", "link", "set", "lo", "up"], check=True)
        conf = base / "dnsmasq.conf"
        conf.write_text(DNSMASQ_CONF)
        log = base / "dnsmasq.log"
        proc = env.spawn(
            [
                dnsmasq,
                "--keep-in-foreground",
                f"--conf-file={conf}",
                "--user=root",
                "--pid-file=",
                "--log-facility=-",
            ],
            log,
        )

        def answers() -> bool:
            out = env.run("python3", "-c", "import socket; print(socket.gethostbyname('n1.ssl.test'))")
            return out.stdout.strip() == "127.0.0.11"

        wait_for(answers, 20, "dnsmasq answering in the namespace", proc, log)
        yield env
    finally:
        for p in env.procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        subprocess.run(["ip", "netns", "delete", ns], check=False)
        shutil.rmtree(etc, ignore_errors=True)


# The records: `ssl.test` has https peers (`_etcd-server-ssl._tcp`, and the same under the service name
# `red`), which etcd 3.4.23 bootstraps from;
# `plain.test` has http peers under the service name `blue` (`_etcd-server-blue._tcp`, for
# --discovery-srv-name blue). Each member has its own loopback address, the same port.
DNSMASQ_CONF = """\
no-resolv
no-hosts
bind-interfaces
listen-address=127.0.0.53
port=53
srv-host=_etcd-server-ssl._tcp.ssl.test,n1.ssl.test,2380,0,0
srv-host=_etcd-server-ssl._tcp.ssl.test,n2.ssl.test,2380,0,0
srv-host=_etcd-server-ssl._tcp.ssl.test,n3.ssl.test,2380,0,0
srv-host=_etcd-server-ssl-red._tcp.ssl.test,n1.ssl.test,2380,0,0
srv-host=_etcd-server-ssl-red._tcp.ssl.test,n2.ssl.test,2380,0,0
srv-host=_etcd-server-ssl-red._tcp.ssl.test,n3.ssl.test,2380,0,0
host-record=n1.ssl.test,127.0.0.11
host-record=n2.ssl.test,127.0.0.12
host-record=n3.ssl.test,127.0.0.13
srv-host=_etcd-server-blue._tcp.plain.test,p1.plain.test,2380,0,0
srv-host=_etcd-server-blue._tcp.plain.test,p2.plain.test,2380,0,0
srv-host=_etcd-server-blue._tcp.plain.test,p3.plain.test,2380,0,0
host-record=p1.plain.test,127.0.0.21
host-record=p2.plain.test,127.0.0.22
host-record=p3.plain.test,127.0.0.23
"""
