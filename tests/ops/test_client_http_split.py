"""--listen-client-http-urls (etcd 3.5): gRPC alone on the client URLs, HTTP on its own URLs."""

from __future__ import annotations

import http.client
import urllib.error
import urllib.request

import pytest
from testlib import Cluster, etcdctl, free_port, have_etcd

pytestmark = pytest.mark.skipif(not have_etcd(), reason="etcdctl 3.4 not installed")


def test_grpc_and_http_on_separate_urls(tmp_path):
    http_port = free_port()
    with Cluster.start(
        tmp_path,
        1,
        binary="etcdstore",
        extra_args=["--listen-client-http-urls", f"http://127.0.0.1:{http_port}"],
    ) as c:
        ep = c.endpoints[0]
        assert etcdctl([ep], "put", "k", "v").stdout == "OK\n"
        assert etcdctl([ep], "get", "k").stdout == "k\nv\n"
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/health", timeout=5) as r:
            assert r.status == 200
        with urllib.request.urlopen(
            f"http://127.0.0.1:{http_port}/v3/kv/range", data=b'{"key":"aw=="}', timeout=5
        ) as r:
            assert b'"count":"1"' in r.read()
        # The gRPC-only port does not speak HTTP/1 any more.
        with pytest.raises((urllib.error.URLError, ConnectionError, OSError, http.client.HTTPException)):
            urllib.request.urlopen(f"http://{ep}/health", timeout=3).read()
