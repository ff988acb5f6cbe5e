"""Which TLS Secrets to (re)write, given the ones that exist (pure; time is a parameter).

Leaf certificates are re-issued `renewBeforeDays` before they expire, or when they no longer
cover the member names or are not signed by a trusted CA. Any change of the mounted Secrets
changes the pod template's tls-hash annotation, which rolls the members one at a time.

The CA is replaced in three rolls so that no two members ever distrust each other:
  1. "trust": a new CA is made; every ca.crt becomes [new, old]; leaves stay signed by old;
  2. "issue": (after the roll) leaves are re-issued by the new CA;
  3. steady: (after the roll) the old CA leaves the bundle.
The phase is kept in an annotation of the CA Secret, so a restarted operator continues it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from etcdoperator import certs
from etcdoperator.naming import ANNOTATION_CA_ROTATION, ClusterRef
from etcdoperator.spec import ClusterSpec

PHASE_STEADY = ""
PHASE_TRUST = "trust"
PHASE_ISSUE = "issue"


@dataclass(frozen=True, slots=True)
class SecretContent:
    data: Mapping[str, bytes]
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SecretWrite:
    name: str
    component: str
    data: Mapping[str, bytes]
    kind: str  # kubernetes.io/tls | Opaque
    reason: str
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Leaf:
    secret: str
    component: str
    common_name: str
    server: bool
    client: bool
    dns: tuple[str, ...]
    ips: tuple[str, ...]


def _leaves(ref: ClusterRef, spec: ClusterSpec) -> list[_Leaf]:
    names = tuple(ref.server_dns_names())
    ips = certs.LOOPBACK_IPS
    out: list[_Leaf] = []
    if spec.tls.client.mode == "auto":
        out.append(_Leaf(ref.server_secret, "tls-server", ref.client_service, True, True, names, ips))
        # CN root: with authentication on, etcd maps a client certificate's CN to the user.
        out.append(_Leaf(ref.client_secret, "tls-client", "root", False, True, (), ()))
    if spec.tls.peer.mode == "auto":
        out.append(_Leaf(ref.peer_secret, "tls-peer", ref.peer_service, True, True, names, ips))
    return out


def plan_tls(
    ref: ClusterRef,
    spec: ClusterSpec,
    existing: Mapping[str, SecretContent | None],
    *,
    now: dt.datetime,
    rolled: bool,
) -> list[SecretWrite]:
    """`rolled`: every member runs the current pod template (a CA rotation may advance)."""
    if not spec.tls.auto:
        return []
    writes: list[SecretWrite] = []
    days = spec.tls
    ca_secret = existing.get(ref.ca_secret)
    ca, signer, bundle, phase, ca_write = _ca_state(ref, spec, ca_secret, now=now, rolled=rolled)
    if ca_write is not None:
        writes.append(ca_write)
    trusted = certs.split_bundle(bundle)
    renew_before = dt.timedelta(days=days.renew_before_days)
    for leaf in _leaves(ref, spec):
        cur = existing.get(leaf.secret)
        reason = ""
        if cur is None or "tls.crt" not in cur.data or "tls.key" not in cur.data:
            reason = "created"
        else:
            crt = cur.data["tls.crt"]
            if certs.due_for_renewal(crt, renew_before, now=now):
                reason = "renewed before expiry"
            elif not certs.covers(crt, leaf.dns, leaf.ips):
                reason = "names changed"
            elif phase == PHASE_TRUST and not any(certs.signed_by(crt, c) for c in trusted):
                reason = "not signed by a trusted CA"
            elif phase != PHASE_TRUST and not certs.signed_by(crt, ca.cert_pem):
                reason = "re-issued by the new CA" if phase == PHASE_ISSUE else "not signed by the CA"
            elif cur.data.get("ca.crt") != bundle:
                writes.append(
                    SecretWrite(
                        leaf.secret,
                        leaf.component,
                        {**cur.data, "ca.crt": bundle},
                        "kubernetes.io/tls",
                        "CA bundle changed",
                    )
                )
                continue
        if not reason:
            continue
        pair = certs.issue(
            signer,
            leaf.common_name,
            days=days.certificate_validity_days,
            dns_names=leaf.dns,
            ip_addresses=leaf.ips,
            server=leaf.server,
            client=leaf.client,
            now=now,
        )
        writes.append(
            SecretWrite(
                leaf.secret,
                leaf.component,
                {"tls.crt": pair.cert_pem, "tls.key": pair.key_pem, "ca.crt": bundle},
                "kubernetes.io/tls",
                reason,
            )
        )
    return writes


def _ca_state(
    ref: ClusterRef, spec: ClusterSpec, cur: SecretContent | None, *, now: dt.datetime, rolled: bool
) -> tuple[certs.KeyPair, certs.KeyPair, bytes, str, SecretWrite | None]:
    """(CA, the CA that signs new leaves, trust bundle, phase, the CA Secret to write).

    During "trust" new leaves are still signed by the old CA: members not restarted yet
    would not accept the new one."""
    t = spec.tls
    # A CA must outlive every leaf it signs: replace it before a fresh leaf would outlive it.
    ca_renew = dt.timedelta(days=t.certificate_validity_days + t.renew_before_days)
    if cur is None or "tls.crt" not in cur.data or "tls.key" not in cur.data:
        pair = certs.new_ca(f"{ref.name} etcd CA", t.ca_validity_days, now=now)
        data = {"tls.crt": pair.cert_pem, "tls.key": pair.key_pem, "ca.crt": pair.cert_pem}
        return (
            pair,
            pair,
            pair.cert_pem,
            PHASE_STEADY,
            SecretWrite(
                ref.ca_secret, "ca", data, "Opaque", "created", {ANNOTATION_CA_ROTATION: PHASE_STEADY}
            ),
        )
    pair = certs.KeyPair(cur.data["tls.crt"], cur.data["tls.key"])
    bundle = cur.data.get("ca.crt", pair.cert_pem)
    phase = cur.annotations.get(ANNOTATION_CA_ROTATION, PHASE_STEADY)
    if phase == PHASE_STEADY and certs.due_for_renewal(pair.cert_pem, ca_renew, now=now):
        new = certs.new_ca(f"{ref.name} etcd CA", t.ca_validity_days, now=now)
        bundle = new.cert_pem + pair.cert_pem
        data = {
            "tls.crt": new.cert_pem,
            "tls.key": new.key_pem,
            "ca.crt": bundle,
            "previous.crt": pair.cert_pem,
            "previous.key": pair.key_pem,
        }
        return (
            new,
            pair,
            bundle,
            PHASE_TRUST,
            SecretWrite(
                ref.ca_secret,
                "ca",
                data,
                "Opaque",
                "CA rotation: trusting the new CA",
                {ANNOTATION_CA_ROTATION: PHASE_TRUST},
            ),
        )
    if phase == PHASE_TRUST and not rolled and "previous.crt" in cur.data:
        previous = certs.KeyPair(cur.data["previous.crt"], cur.data["previous.key"])
        return pair, previous, bundle, phase, None
    if phase == PHASE_TRUST and rolled:
        return (
            pair,
            pair,
            bundle,
            PHASE_ISSUE,
            SecretWrite(
                ref.ca_secret,
                "ca",
                dict(cur.data),
                "Opaque",
                "CA rotation: issuing from the new CA",
                {ANNOTATION_CA_ROTATION: PHASE_ISSUE},
            ),
        )
    if phase == PHASE_ISSUE and rolled:
        data = {k: v for k, v in cur.data.items() if not k.startswith("previous.")}
        data["ca.crt"] = pair.cert_pem
        return (
            pair,
            pair,
            pair.cert_pem,
            PHASE_STEADY,
            SecretWrite(
                ref.ca_secret,
                "ca",
                data,
                "Opaque",
                "CA rotation: done, old CA dropped",
                {ANNOTATION_CA_ROTATION: PHASE_STEADY},
            ),
        )
    return pair, pair, bundle, phase, None


def tls_hash(contents: list[Mapping[str, bytes] | None]) -> str:
    """Digest of the Secrets members mount: any change rolls the members."""
    h = hashlib.sha256()
    for data in contents:
        if data is None:
            h.update(b"\0none")
            continue
        for key in sorted(data):
            h.update(key.encode() + b"\0" + data[key] + b"\0")
    return h.hexdigest()[:16]
