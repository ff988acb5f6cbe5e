"""The pure parts of discovery: SRV answers to an initial cluster (etcd's srv.GetCluster rules), the
discovery directory's values to a cluster string, and the flags' checks. The DNS server and the
discovery service themselves are exercised in test_discovery_srv.py and test_discovery_url.py."""

from __future__ import annotations

import pytest
from etcdstore.config import ConfigError, parse_args
from etcdstore.discovery import srv, v2


def lookup_from(table: dict[str, list[srv.SRV]]):
    def lookup(qname: str) -> list[srv.SRV]:
        if qname not in table:
            raise srv.SRVError(f"lookup {qname} on 127.0.0.53:53: no such host")
        return table[qname]

    return lookup


# Targets are IP literals so that resolving them needs no DNS server.
RECORDS = {
    "_etcd-server._tcp.example.test": [srv.SRV("127.0.0.1.", 2380), srv.SRV("127.0.0.2.", 2380)],
    "_etcd-server-ssl-blue._tcp.example.test": [srv.SRV("127.0.0.3.", 2380), srv.SRV("127.0.0.1.", 2381)],
}


def test_service_names_as_etcd():
    assert srv.service_name("etcd-server", "", "http") == "etcd-server"
    assert srv.service_name("etcd-server", "", "https") == "etcd-server-ssl"
    assert srv.service_name("etcd-server", "blue", "https") == "etcd-server-ssl-blue"


def test_self_by_resolved_address_others_numbered():
    got = srv.dns_cluster_names(
        "example.test", "", "me", [("http", "127.0.0.2", 2380)], lookup=lookup_from(RECORDS)
    )
    assert got == ["0=http://127.0.0.1:2380", "me=http://127.0.0.2:2380"]


def test_suffix_and_https_records():
    got = srv.dns_cluster_names(
        "example.test", "blue", "me", [("https", "127.0.0.1", 2381)], lookup=lookup_from(RECORDS)
    )
    assert got == ["0=https://127.0.0.3:2380", "me=https://127.0.0.1:2381"]


def test_scheme_mismatch_is_etcds_error():
    with pytest.raises(srv.SRVError, match="has scheme mismatch with expected peer http://127.0.0.1:2381"):
        srv.get_cluster(
            "https",
            "etcd-server-ssl-blue",
            "me",
            "example.test",
            [("http", "127.0.0.1", 2381)],
            lookup=lookup_from({"_etcd-server-ssl-blue._tcp.example.test": [srv.SRV("127.0.0.1.", 2381)]}),
        )


def test_no_records_at_all():
    with pytest.raises(srv.SRVError, match="error querying DNS SRV records for _etcd-server-ssl lookup"):
        srv.dns_cluster_names("none.test", "", "me", [("http", "127.0.0.1", 2380)], lookup=lookup_from({}))


def test_nodes_to_cluster():
    nodes = [v2.Node("/t/1", "a=http://127.0.0.1:1", 5), v2.Node("/t/2", "b=http://127.0.0.1:2", 6)]
    assert v2.nodes_to_cluster(nodes, 2) == "a=http://127.0.0.1:1,b=http://127.0.0.1:2"
    with pytest.raises(v2.ProtocolError, match="discovery: found duplicate name"):
        v2.nodes_to_cluster([nodes[0], v2.Node("/t/3", "a=http://127.0.0.1:3", 7)], 2)
    with pytest.raises(v2.ProtocolError, match="discovery: invalid URL"):
        v2.nodes_to_cluster([v2.Node("/t/4", "garbage", 8)], 1)


def test_flags():
    cfg = parse_args(["--discovery", "http://127.0.0.1:1/abc", "--name", "x"], environ={})
    assert cfg.discovery == "http://127.0.0.1:1/abc" and cfg.discovery_fallback == "proxy"
    assert cfg.initial_cluster == {}  # etcd drops the default initial cluster when discovering
    cfg = parse_args([], environ={"ETCD_DISCOVERY_SRV": "example.test", "ETCD_DISCOVERY_SRV_NAME": "blue"})
    assert (cfg.discovery_srv, cfg.discovery_srv_name) == ("example.test", "blue")
    with pytest.raises(ConfigError, match="multiple discovery or bootstrap flags are set"):
        parse_args(["--discovery-srv", "a", "--initial-cluster", "default=http://127.0.0.1:2380"], environ={})
    with pytest.raises(ConfigError, match='invalid value "maybe" for flag --discovery-fallback'):
        parse_args(["--discovery-fallback", "maybe"], environ={})
