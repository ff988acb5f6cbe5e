"""TLS Secrets made by the operator (auto mode)."""

from __future__ import annotations

import base64

from etcdoperator.build.common import Manifest, metadata
from etcdoperator.naming import ClusterRef
from etcdoperator.tlsplan import SecretWrite


def tls_secret(ref: ClusterRef, write: SecretWrite) -> Manifest:
    meta = metadata(ref, write.name, write.component)
    if write.annotations:
        meta["annotations"] = dict(write.annotations)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": meta,
        "type": write.kind,
        "data": {k: base64.b64encode(v).decode() for k, v in sorted(write.data.items())},
    }
