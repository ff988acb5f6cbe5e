"""`etcdstore snapshot restore|status`: build a member data dir from a snapshot, or describe one.

Both read etcd's snapshot files (what `etcdctl snapshot save` stores from etcd 3.4 or from this
store) and this store's own older format.

Restore works as etcdutl's does: the state machine (keys with their revisions, leases, auth)
comes from the snapshot; membership is replaced by the cluster given on the command line
(fresh member and cluster IDs derived from --initial-cluster and --initial-cluster-token);
Raft starts from a snapshot at index N = the number of members, term 1, so every restored
member of the new cluster starts from the same point.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import struct
import sys
from typing import NoReturn

from etcdstore.config import parse_initial_cluster, parse_urls
from etcdstore.membership import MEMBER_ID_KEY, Membership, member_id
from etcdstore.raft import codec
from etcdstore.raft.records import ConfState, HardState, SnapshotMetadata
from etcdstore.snapshot import etcdformat
from etcdstore.snapshot import format as snapfmt
from etcdstore.storage import backend as bk
from etcdstore.storage import raftlog

_U64 = struct.Struct(">Q")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        print(f"Error: {message}", file=sys.stderr)
        raise SystemExit(1)


def restore(
    path: str,
    *,
    data_dir: str,
    name: str,
    initial_cluster: str,
    token: str,
    advertise_peer_urls: str,
    skip_hash_check: bool = False,
) -> Membership:
    # Either etcd's snapshot (a bbolt database + sha256, what Maintenance.Snapshot streams and
    # etcd 3.4 writes) or this store's own older format; both are checked before anything is written.
    etcd_file = etcdformat.is_bbolt(path)
    if etcd_file:
        etcdformat.verify(path, skip_hash_check=skip_hash_check)
    else:
        snapfmt.verify(path)
    if os.path.exists(data_dir) and os.listdir(data_dir):
        raise FileExistsError(f"data-dir {data_dir!r} exists")
    cluster = parse_initial_cluster(initial_cluster)
    peer_urls = [str(u) for u in parse_urls(advertise_peer_urls)]
    if name not in cluster:
        raise ValueError(f'couldn\'t find local name "{name}" in the initial cluster configuration')
    if sorted(str(u) for u in cluster[name]) != sorted(peer_urls):
        raise ValueError(
            f"--initial-cluster has {name}={','.join(str(u) for u in cluster[name])} but missing "
            f"from --initial-advertise-peer-urls={','.join(peer_urls)}"
        )
    tmp = data_dir.rstrip("/") + ".restoring"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(os.path.join(tmp, "member"))
    be = bk.Backend(os.path.join(tmp, "member", "db"))
    try:
        if etcd_file:
            etcdformat.load_into(path, be, verified=True)
        else:
            snapfmt.load_into(path, be)
        urls = {n: [str(u) for u in us] for n, us in cluster.items()}
        membership = Membership.from_initial_cluster(urls, token)
        for n, us in urls.items():
            membership.members[member_id(us, token)].name = n
        mine = member_id(peer_urls, token)
        batch = be.batch()
        be.clear_family(batch, bk.MEMBERS)
        be.clear_family(batch, bk.ALARM)
        membership.save_all(batch)
        batch.put(bk.RAFT_STATE, MEMBER_ID_KEY, _U64.pack(mine))
        # Raft starts at a snapshot covering the initial membership: index N, term 1.
        index = len(membership.members)
        conf = ConfState(voters=sorted(membership.members))
        batch.put(
            bk.RAFT_STATE, raftlog.SNAPSHOT, codec.encode_snapshot_metadata(SnapshotMetadata(index, 1, conf))
        )
        batch.put(bk.RAFT_STATE, raftlog.CONF_STATE, codec.encode_conf_state(conf))
        batch.put(
            bk.RAFT_STATE,
            raftlog.HARD_STATE,
            codec.encode_hard_state(HardState(term=1, vote=0, commit=index)),
        )
        be.write(batch, sync=True)
        from etcdstore.mvcc.kvstore import KVStore

        kv = KVStore(be)
        batch = be.batch()
        kv.set_consistent_index(batch, index, 1)
        be.write(batch, sync=True)
    finally:
        be.close()
    if os.path.exists(data_dir):
        os.rmdir(data_dir)  # empty (checked above)
    os.replace(tmp, data_dir)
    return membership


def _human(n: int) -> str:
    """go-humanize's Bytes, as etcdctl prints sizes (SI units, 3 significant digits below 10)."""
    if n < 10:
        return f"{n} B"
    e = math.floor(math.log(n) / math.log(1000))
    val = math.floor(n / 1000**e * 10 + 0.5) / 10
    unit = ("B", "kB", "MB", "GB", "TB", "PB", "EB")[e]
    return f"{val:.1f} {unit}" if val < 10 else f"{val:.0f} {unit}"


def status(path: str) -> dict:
    if etcdformat.is_bbolt(path):
        return etcdformat.status(path)  # as etcdctl snapshot status computes it
    footer = snapfmt.verify(path)
    return {
        "hash": footer["hash"],
        "revision": footer["revision"],
        "totalKey": footer["totalKeys"],
        "totalSize": os.path.getsize(path),
    }


def main(argv: list[str]) -> int:
    parser = _Parser(prog="etcdstore snapshot")
    sub = parser.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("restore", help="restore a snapshot into a new member data dir")
    r.add_argument("file")
    r.add_argument("--data-dir", default=None)
    r.add_argument("--name", default="default")
    r.add_argument("--initial-cluster", default=None)
    r.add_argument("--initial-cluster-token", default="etcd-cluster")
    r.add_argument("--initial-advertise-peer-urls", default="http://localhost:2380")
    r.add_argument(
        "--skip-hash-check",
        action="store_true",
        help="ignore the snapshot's sha256 (needed for a "
        "db file copied from a data dir); this store's own format is always verified",
    )
    st = sub.add_parser("status", help="print hash, revision, total keys and size of a snapshot")
    st.add_argument("file")
    st.add_argument("-w", "--write-out", default="simple", choices=("simple", "table", "json"))
    args = parser.parse_args(argv)
    try:
        if args.cmd == "restore":
            data_dir = args.data_dir or f"{args.name}.etcd"
            cluster = args.initial_cluster or f"{args.name}={args.initial_advertise_peer_urls}"
            membership = restore(
                args.file,
                data_dir=data_dir,
                name=args.name,
                initial_cluster=cluster,
                token=args.initial_cluster_token,
                advertise_peer_urls=args.initial_advertise_peer_urls,
                skip_hash_check=args.skip_hash_check,
            )
            for m in membership.sorted_members():
                print(
                    f"restored member {m.name} ({m.id:x}) of cluster {membership.cluster_id:x} -> {data_dir}"
                    if m.name == args.name
                    else f"added member {m.name} ({m.id:x}) {','.join(m.peer_urls)}"
                )
            return 0
        info = status(args.file)
    except (snapfmt.SnapshotError, ValueError, FileExistsError, OSError) as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    if args.write_out == "json":
        print(json.dumps(info))
    elif args.write_out == "table":
        header = ["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE"]
        row = [f"{info['hash']:x}", str(info["revision"]), str(info["totalKey"]), _human(info["totalSize"])]
        widths = [max(len(a), len(b)) for a, b in zip(header, row)]
        line = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
        print(line)
        print("|" + "|".join(f" {h:^{w}} " for h, w in zip(header, widths)) + "|")
        print(line)
        print("|" + "|".join(f" {v:>{w}} " for v, w in zip(row, widths)) + "|")
        print(line)
    else:
        print(f"{info['hash']:x}, {info['revision']}, {info['totalKey']}, {_human(info['totalSize'])}")
    return 0
