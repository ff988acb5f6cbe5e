"""Responses carry the revision as of their own entry, even when many entries share an apply batch."""

from __future__ import annotations

import asyncio

from etcdstore.config import parse_args
from etcdstore.proto.etcdserverpb import rpc_pb2
from etcdstore.server.server import EtcdServer
from etcdstore.txn.requests import Kind
from testlib import eventually_async, free_port


async def _run(data_dir: str) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cfg = parse_args(
        [
            "--name",
            "h",
            "--data-dir",
            data_dir,
            "--listen-peer-urls",
            url,
            "--initial-advertise-peer-urls",
            url,
            "--initial-cluster",
            f"h={url}",
        ],
        {},
    )
    s = EtcdServer(cfg)
    await s.start()
    try:
        await eventually_async(lambda: s.leader_id != 0, interval=0.01, message="a leader")
        grant = await s.propose(
            Kind.LEASE_GRANT, rpc_pb2.LeaseGrantRequest(ID=7, TTL=600).SerializeToString()
        )
        assert grant.ID == 7
        await s.propose(Kind.PUT, rpc_pb2.PutRequest(key=b"leased", value=b"v", lease=7).SerializeToString())
        # Queue a revoke and several later puts before the drive loop runs: one Ready, one batch.
        revoke = asyncio.ensure_future(
            s.propose(Kind.LEASE_REVOKE, rpc_pb2.LeaseRevokeRequest(ID=7).SerializeToString())
        )
        puts = [
            asyncio.ensure_future(
                s.propose(Kind.PUT, rpc_pb2.PutRequest(key=b"p%d" % i, value=b"x").SerializeToString())
            )
            for i in range(5)
        ]
        revoked = await revoke
        put_revs = [p.header.revision for p in await asyncio.gather(*puts)]
        deleted_at = revoked.header.revision
        # The revoke's revision is the one at which the leased key was deleted...
        before = s.kv.range(b"leased", None, rev=deleted_at - 1)
        after = s.kv.range(b"leased", None, rev=deleted_at)
        assert before.count == 1 and after.count == 0
        # ...and every put got its own, increasing, revision after it.
        assert put_revs == sorted(put_revs) and len(set(put_revs)) == 5 and put_revs[0] == deleted_at + 1
    finally:
        await s.stop()


def test_each_response_has_its_own_revision(tmp_path):
    asyncio.run(_run(str(tmp_path / "h")))
