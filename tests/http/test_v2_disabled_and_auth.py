"""Without --enable-v2 every /v2 path is Go's 404, as in etcd 3.4; the gateway stays on.
With v3 auth enabled, etcd 3.4's v2 API is unaffected by it."""

from __future__ import annotations

from collections.abc import Iterator

import aiohttp
import pytest
from httpdiff import Differ, fetch, start, url
from testlib import have_etcd

pytestmark = pytest.mark.etcd


@pytest.fixture(scope="module")
def plain_pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    if not have_etcd():
        pytest.skip("needs the real etcd 3.4 binaries")
    base = tmp_path_factory.mktemp("plain")
    ours = start(base, "etcdstore")
    etcd = start(base, "etcd")
    try:
        yield {"ours": url(ours), "etcd": url(etcd)}
    finally:
        ours.close()
        etcd.close()


async def test_v2_off_is_404(plain_pair: dict[str, str], session: aiohttp.ClientSession) -> None:
    d = Differ(plain_pair["ours"], plain_pair["etcd"], session, "v2")
    for method, path in (
        ("GET", "/v2/keys/foo"),
        ("PUT", "/v2/keys/foo?value=1"),
        ("GET", "/v2/members"),
        ("GET", "/v2/stats/self"),
        ("GET", "/v2/machines"),
        ("DELETE", "/v2/keys"),
    ):
        r = await d.same(method, path)
        assert r.status == 404 and r.text == "404 page not found\n"
    ours, etcd = await d.both("GET", "/version")
    assert ours.status == etcd.status == 200 and ours.json == etcd.json
    v3 = Differ(plain_pair["ours"], plain_pair["etcd"], session, "v3")
    r = await v3.same("POST", "/v3/kv/put", json={"key": "YQ==", "value": "Yg=="})
    assert r.status == 200


async def test_v2_unaffected_by_v3_auth(pair: dict[str, str], session: aiohttp.ClientSession) -> None:
    d = Differ(pair["ours"], pair["etcd"], session, "v3")
    await d.same("POST", "/v3/auth/user/add", json={"name": "root", "password": "pw"})
    await d.same("POST", "/v3/auth/user/grant", json={"user": "root", "role": "root"})
    await d.same("POST", "/v3/auth/enable", json={})
    try:
        v2 = Differ(pair["ours"], pair["etcd"], session, "v2")
        await v2.same("PUT", "/v2/keys/authed", data={"value": "still works"})
        await v2.same("GET", "/v2/keys/authed")
    finally:
        for who, base in pair.items():
            tok = (
                await fetch(
                    session, "POST", base + "/v3/auth/authenticate", json={"name": "root", "password": "pw"}
                )
            ).json["token"]
            r = await fetch(
                session, "POST", base + "/v3/auth/disable", json={}, headers={"Authorization": tok}
            )
            assert r.status == 200, (who, r.text)
