"""Operator-managed certificates: creation, renewal before expiry, and the three-step CA rotation."""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from etcdoperator import certs, tlsplan
from etcdoperator.naming import ANNOTATION_CA_ROTATION, ClusterRef
from etcdoperator.spec import parse_cluster_spec

REF = ClusterRef("ns", "c", "uid")
SPEC = parse_cluster_spec(
    {
        "tls": {
            "client": {"mode": "auto"},
            "peer": {"mode": "auto"},
            "auto": {"caValidityDays": 400, "certificateValidityDays": 90, "renewBeforeDays": 30},
        }
    }
)
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def apply(existing, writes):
    out = dict(existing)
    for w in writes:
        out[w.name] = tlsplan.SecretContent(dict(w.data), dict(w.annotations))
    return out


def test_creates_ca_and_leaves_once():
    writes = tlsplan.plan_tls(REF, SPEC, {}, now=T0, rolled=False)
    state = apply({}, writes)
    ca = state["c-ca"].data["tls.crt"]
    for name in ("c-server-tls", "c-peer-tls", "c-client-tls"):
        d = state[name].data
        assert certs.signed_by(d["tls.crt"], ca) and d["ca.crt"] == ca
    server = x509.load_pem_x509_certificate(state["c-server-tls"].data["tls.crt"])
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "*.c.ns.svc.cluster.local" in san.get_values_for_type(x509.DNSName)
    assert "c-client.ns.svc" in san.get_values_for_type(x509.DNSName)
    client = x509.load_pem_x509_certificate(state["c-client-tls"].data["tls.crt"])
    assert client.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "root"
    assert tlsplan.plan_tls(REF, SPEC, state, now=T0 + dt.timedelta(days=1), rolled=True) == []


def test_leaves_renewed_before_expiry_only():
    state = apply({}, tlsplan.plan_tls(REF, SPEC, {}, now=T0, rolled=False))
    assert tlsplan.plan_tls(REF, SPEC, state, now=T0 + dt.timedelta(days=59), rolled=False) == []
    writes = tlsplan.plan_tls(REF, SPEC, state, now=T0 + dt.timedelta(days=61), rolled=False)
    assert {w.name for w in writes} == {"c-server-tls", "c-peer-tls", "c-client-tls"}
    assert all(w.reason == "renewed before expiry" for w in writes)
    new = apply(state, writes)
    assert certs.not_after(new["c-server-tls"].data["tls.crt"]) > T0 + dt.timedelta(days=140)


def test_hash_changes_with_mounted_secrets():
    state = apply({}, tlsplan.plan_tls(REF, SPEC, {}, now=T0, rolled=False))
    h1 = tlsplan.tls_hash([state["c-server-tls"].data, state["c-peer-tls"].data])
    renewed = apply(state, tlsplan.plan_tls(REF, SPEC, state, now=T0 + dt.timedelta(days=70), rolled=False))
    assert tlsplan.tls_hash([renewed["c-server-tls"].data, renewed["c-peer-tls"].data]) != h1


def test_ca_rotation_never_breaks_trust_between_members():
    state = apply({}, tlsplan.plan_tls(REF, SPEC, {}, now=T0, rolled=False))
    old_ca = state["c-ca"].data["tls.crt"]
    # CA (400 days) is replaced once it has less than 90+30 days left.
    t = T0 + dt.timedelta(days=290)
    writes = tlsplan.plan_tls(REF, SPEC, state, now=t, rolled=False)
    state = apply(state, writes)
    assert state["c-ca"].annotations[ANNOTATION_CA_ROTATION] == "trust"
    bundle = state["c-ca"].data["ca.crt"]
    new_ca = state["c-ca"].data["tls.crt"]
    assert new_ca != old_ca and certs.split_bundle(bundle) == [new_ca, old_ca]
    for name in ("c-server-tls", "c-peer-tls"):
        d = state[name].data
        assert d["ca.crt"] == bundle
        assert certs.signed_by(d["tls.crt"], old_ca), (
            "leaves stay on the old CA until everyone trusts the new one"
        )
    # not rolled yet: nothing moves
    assert tlsplan.plan_tls(REF, SPEC, state, now=t, rolled=False) == []
    state = apply(state, tlsplan.plan_tls(REF, SPEC, state, now=t, rolled=True))
    assert state["c-ca"].annotations[ANNOTATION_CA_ROTATION] == "issue"
    for name in ("c-server-tls", "c-peer-tls", "c-client-tls"):
        assert certs.signed_by(state[name].data["tls.crt"], new_ca)
        assert state[name].data["ca.crt"] == bundle
    state = apply(state, tlsplan.plan_tls(REF, SPEC, state, now=t, rolled=True))
    assert state["c-ca"].annotations[ANNOTATION_CA_ROTATION] == ""
    assert state["c-ca"].data["ca.crt"] == new_ca and "previous.crt" not in state["c-ca"].data
    assert all(state[n].data["ca.crt"] == new_ca for n in ("c-server-tls", "c-peer-tls", "c-client-tls"))
    assert tlsplan.plan_tls(REF, SPEC, state, now=t, rolled=True) == []


def test_no_tls_no_secrets():
    assert tlsplan.plan_tls(REF, parse_cluster_spec({}), {}, now=T0, rolled=True) == []


def test_covers_and_signed_by():
    ca = certs.new_ca("x", 10)
    other = certs.new_ca("y", 10)
    leaf = certs.issue(ca, "l", days=5, dns_names=["a.b"], ip_addresses=["127.0.0.1"])
    assert certs.covers(leaf.cert_pem, ["a.b"], ["127.0.0.1"])
    assert not certs.covers(leaf.cert_pem, ["c.d"])
    assert certs.signed_by(leaf.cert_pem, ca.cert_pem) and not certs.signed_by(leaf.cert_pem, other.cert_pem)
    assert certs.not_after(leaf.cert_pem) <= certs.not_after(ca.cert_pem)
