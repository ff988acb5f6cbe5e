"""`etcdoperator restore-member`: the init container that seeds a new cluster from a backup.

It does something only for the seed pod, only while the cluster is being bootstrapped
(initial-cluster-state new) and only when the data dir does not exist yet, so it is idempotent:
a restarted seed, a joining member or a member of a formed cluster start untouched. The
snapshot is fetched, its sha256 checked (against --sha256 and the backup's .json record), then
the engine's own tool builds the data dir in a scratch directory that is renamed into place:
    etcd:      etcdctl snapshot restore
    etcdstore: etcdstore snapshot restore
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from etcdoperator.backup_runner import add_location_args
from etcdoperator.objectstore import S3Options, open_object, sha256_file


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="etcdoperator restore-member", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engine", choices=["etcd", "etcdstore"], required=True)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--seed", required=True, help="the only member that restores")
    p.add_argument("--initial-cluster", required=True)
    p.add_argument("--initial-cluster-state", required=True)
    p.add_argument("--initial-cluster-token", required=True)
    p.add_argument("--initial-advertise-peer-urls", required=True)
    p.add_argument("--source", required=True, help="file:///path/x.db or s3://bucket/key")
    p.add_argument("--sha256", default=None)
    add_location_args(p)
    return p


def restore_command(args: argparse.Namespace, snapshot: Path, target: Path) -> list[str]:
    tool = ["etcdctl"] if args.engine == "etcd" else ["etcdstore"]
    return [
        *tool, "snapshot", "restore", str(snapshot),
        f"--name={args.name}",
        f"--initial-cluster={args.initial_cluster}",
        f"--initial-cluster-token={args.initial_cluster_token}",
        f"--initial-advertise-peer-urls={args.initial_advertise_peer_urls}",
        f"--data-dir={target}",
    ]


def restore(args: argparse.Namespace) -> str:
    data = Path(args.data_dir)
    if args.name != args.seed:
        return f"{args.name} is not the seed: nothing to restore"
    if args.initial_cluster_state != "new":
        return "the cluster has formed already: nothing to restore"
    if data.exists() and any(data.iterdir()):
        return f"{data} already holds data: nothing to restore"
    store, key = open_object(args.source, S3Options(args.s3_endpoint, args.s3_region, args.s3_path_style))
    expected = {args.sha256} if args.sha256 else set()
    record = store.get_bytes(key[: -len(".db")] + ".json") if key.endswith(".db") else None
    if record:
        expected.add(json.loads(record).get("sha256"))
    expected.discard(None)
    if len(expected) > 1:
        raise RuntimeError(f"conflicting checksums for {args.source}: {sorted(expected)}")
    parent = data.parent
    parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".restore-", dir=parent) as tmp:
        snapshot = Path(tmp) / "snapshot.db"
        store.get_file(key, snapshot)
        digest = sha256_file(snapshot)
        if expected and digest not in expected:
            raise RuntimeError(f"checksum mismatch for {args.source}: got {digest}, want {expected.pop()}")
        target = Path(tmp) / "data"
        env = dict(os.environ, ETCDCTL_API="3")
        proc = subprocess.run(restore_command(args, snapshot, target), env=env, capture_output=True, text=True,
                              check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"snapshot restore failed ({proc.returncode}): {proc.stderr.strip()[-800:]}")
        if data.exists():
            data.rmdir()  # empty (checked above)
        os.replace(target, data)
    return f"restored {args.source} (sha256 {digest}) into {data}"


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    try:
        print(restore(args))
    except Exception as e:  # noqa: BLE001  (any failure fails the init container, with the reason)
        print(f"restore failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


__all__ = ["main", "restore", "restore_command", "shutil"]
