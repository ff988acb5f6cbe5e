"""`etcdoperator backup`: take one snapshot through the Snapshot API and store it, with retention.

Runs in a Job pod. Layout at the destination:
    <prefix>/<namespace>/<cluster>/<kind>/<name>.db     the snapshot (etcd: bbolt db + sha256 trailer)
    <prefix>/<namespace>/<cluster>/<kind>/<name>.json   {revision, size, sha256, time, ...}
Retention keeps the newest `keep` backups of the kind (names sort by time). The result JSON is
printed and written to --result-file (the container's termination message).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from etcdstore.client import Client, TLSConfig

from etcdoperator import addressing
from etcdoperator.objectstore import ObjectStore, S3Options, open_location

PASSWORD_ENV = "ETCDOPERATOR_PASSWORD"


def add_location_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--s3-endpoint", default=None)
    p.add_argument("--s3-region", default="us-east-1")
    p.add_argument("--s3-path-style", action="store_true")


def add_client_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--endpoints", required=True, help="comma-separated client URLs")
    p.add_argument("--cacert")
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--user", help=f"user name; the password is read from ${PASSWORD_ENV}")


def client_from_args(args: argparse.Namespace, timeout: float = 30.0) -> Client:
    endpoints = [addressing.translate_url(u.strip()) for u in args.endpoints.split(",") if u.strip()]
    tls = None
    if args.cacert or args.cert or any(u.startswith("https://") for u in endpoints):
        tls = TLSConfig(ca_file=args.cacert, cert_file=args.cert, key_file=args.key)
    password = os.environ.get(PASSWORD_ENV) if args.user else None
    return Client(endpoints, timeout=timeout, tls=tls, user=args.user, password=password)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="etcdoperator backup", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_client_args(p)
    p.add_argument("--cluster", required=True, help="NAMESPACE/NAME of the EtcdCluster")
    p.add_argument("--destination", required=True, help="file:///dir or s3://bucket/prefix")
    p.add_argument("--kind", default="on-demand", choices=["scheduled", "on-demand"])
    p.add_argument("--name", required=True, help="backup name (file name without extension)")
    p.add_argument("--keep", type=int, default=0, help="keep this many backups of this kind (0: all)")
    p.add_argument("--result-file", default=None)
    p.add_argument(
        "--location-base",
        default=None,
        help="report locations as this URL + key (e.g. pvc://claim/dir instead of a mount path)",
    )
    add_location_args(p)
    return p


def backup_dir(prefix: str, cluster: str, kind: str) -> str:
    ns, _, name = cluster.partition("/")
    return "/".join(x for x in (prefix.strip("/"), ns, name, kind) if x)


def apply_retention(store: ObjectStore, directory: str, keep: int) -> list[str]:
    """Delete all but the newest `keep` backups in `directory`; returns the deleted names."""
    if keep <= 0:
        return []
    names = sorted({Path(k).stem for k in store.list(directory) if k.endswith((".json", ".db"))})
    doomed = names[:-keep]
    for name in doomed:
        store.delete(f"{directory}/{name}.db")
        store.delete(f"{directory}/{name}.json")
    return doomed


async def take_backup(args: argparse.Namespace) -> dict[str, Any]:
    store, prefix = open_location(
        args.destination, S3Options(args.s3_endpoint, args.s3_region, args.s3_path_style)
    )
    directory = backup_dir(prefix, args.cluster, args.kind)
    with tempfile.TemporaryDirectory(prefix="etcd-backup-") as tmp:
        path = Path(tmp) / "snapshot.db"
        async with client_from_args(args, timeout=60.0) as client:
            status = await client.status()  # the snapshot holds at least this revision
            size, sha = await client.snapshot_save(path)
        key = f"{directory}/{args.name}.db"
        store.put_file(key, path, sha256=sha)
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    meta = {
        "cluster": args.cluster,
        "name": args.name,
        "kind": args.kind,
        "time": now,
        "revision": status.header.revision,
        "size": size,
        "sha256": sha,
        "location": f"{args.location_base.rstrip('/')}/{key}" if args.location_base else store.describe(key),
        "memberID": f"{status.header.member_id:x}",
        "version": status.version,
    }
    store.put_bytes(f"{directory}/{args.name}.json", json.dumps(meta, indent=2).encode())
    deleted = apply_retention(store, directory, args.keep)
    result = {k: meta[k] for k in ("time", "revision", "size", "sha256", "location")}
    result["pruned"] = len(deleted)
    return result


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    try:
        result = asyncio.run(take_backup(args))
    except Exception as e:  # noqa: BLE001  (any failure becomes the Job's result message)
        msg = json.dumps({"error": f"{type(e).__name__}: {e}"[:900]})
        print(msg, file=sys.stderr)
        if args.result_file:
            Path(args.result_file).write_text(msg)
        return 1
    text = json.dumps(result)
    print(text)
    if args.result_file:
        Path(args.result_file).write_text(text)
    return 0
