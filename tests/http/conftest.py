"""Fixtures for the HTTP API tests: our server and a real etcd 3.4 side by side.

    pair        (module) {"ours": url, "etcd": url}, both started with --enable-v2
    session     an aiohttp ClientSession
    v2 / v3     Differ objects comparing the two servers (v2 keys API / JSON gateway)

Each test module gets fresh servers, so the revision histories of both stay aligned.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from httpdiff import Differ, start, url
from testlib import have_etcd


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    if not have_etcd():
        pytest.skip("needs the real etcd 3.4 binaries")
    base = tmp_path_factory.mktemp("pair")
    ours = start(base, "etcdstore", "--enable-v2")
    try:
        etcd = start(base, "etcd", "--enable-v2")
    except BaseException:
        ours.close()
        raise
    try:
        yield {"ours": url(ours), "etcd": url(etcd)}
    finally:
        ours.close()
        etcd.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s:
        yield s


@pytest.fixture
def v2(pair: dict[str, str], session: aiohttp.ClientSession) -> Differ:
    return Differ(pair["ours"], pair["etcd"], session, "v2")


@pytest.fixture
def v3(pair: dict[str, str], session: aiohttp.ClientSession) -> Differ:
    return Differ(pair["ours"], pair["etcd"], session, "v3")
