"""`etcdoperator restore-member fetch|finish`: the operator-image steps of the restore Job.

A new cluster with `spec.restore` is seeded by a one-shot Job (build/restorejob.py) that runs
before the StatefulSet scales up, with the seed's volume (`data-<name>-0`) mounted:

  1. `restore-member fetch` (init container, operator image): refuses a volume that already
     holds data (unless it is this restore's own unfinished attempt: then it is cleared), fetches
     the snapshot from the backup volume or S3 into `<volume>/.restore/`, and checks its sha256
     (against --sha256 and the backup's .json record).
  2. the engine's own tool, in the cluster's member image (init container):
        etcd < 3.5:  etcdctl snapshot restore       etcd >= 3.5:  etcdutl snapshot restore
        etcdstore:   etcdstore snapshot restore
     so the data dir is written by exactly the version that will run it (`restore_tool`).
  3. `restore-member finish` (operator image): removes the snapshot and the scratch directory.

Only the Job mounts the backup volume and the S3 credentials; member pods never do.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from etcdoperator.backup_runner import add_location_args
from etcdoperator.objectstore import S3Options, open_object, sha256_file

SNAPSHOT = "snapshot.db"
MARKER = "in-progress"


def restore_tool(engine: str, version: str) -> list[str]:
    """The command that restores a snapshot in the member image of `engine` at `version`."""
    if engine == "etcdstore":
        return ["etcdstore", "snapshot", "restore"]
    parts = [int(p) if p.isdigit() else 0 for p in version.lstrip("v").split(".")[:2]]
    major, minor = (parts + [0, 0])[:2]
    if (major, minor) >= (3, 5):
        return ["etcdutl", "snapshot", "restore"]  # etcdctl's restore is deprecated in 3.5, gone in 3.6
    return ["etcdctl", "snapshot", "restore"]


def restore_args(*, snapshot: str, name: str, peer_url: str, token: str, data_dir: str) -> list[str]:
    return [
        snapshot,
        f"--name={name}",
        f"--initial-cluster={name}={peer_url}",
        f"--initial-cluster-token={token}",
        f"--initial-advertise-peer-urls={peer_url}",
        f"--data-dir={data_dir}",
    ]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="etcdoperator restore-member",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="step", required=True)
    fetch = sub.add_parser("fetch", help="check the volume, fetch and verify the snapshot")
    fetch.add_argument("--data-dir", required=True)
    fetch.add_argument("--scratch", required=True, help="directory on the same volume for the snapshot")
    fetch.add_argument("--source", required=True, help="file:///path/x.db or s3://bucket/key")
    fetch.add_argument("--sha256", default=None)
    add_location_args(fetch)
    finish = sub.add_parser("finish", help="check the restored data dir, remove the scratch directory")
    finish.add_argument("--data-dir", required=True)
    finish.add_argument("--scratch", required=True)
    return p


def _holds_data(d: Path) -> bool:
    return d.exists() and any(d.iterdir())


def fetch(args: argparse.Namespace) -> str:
    data, scratch = Path(args.data_dir), Path(args.scratch)
    marker = scratch / MARKER
    if _holds_data(data):
        if not marker.exists():
            raise RuntimeError(f"{data} already holds data: refusing to restore over it")
        shutil.rmtree(data)  # this restore's own unfinished attempt (the Job retried)
    elif data.exists():
        data.rmdir()  # the tool wants to create it
    scratch.mkdir(parents=True, exist_ok=True)
    marker.write_text(args.source + "\n")
    store, key = open_object(args.source, S3Options(args.s3_endpoint, args.s3_region, args.s3_path_style))
    expected = {args.sha256} if args.sha256 else set()
    record = store.get_bytes(key[: -len(".db")] + ".json") if key.endswith(".db") else None
    if record:
        expected.add(json.loads(record).get("sha256"))
    expected.discard(None)
    if len(expected) > 1:
        raise RuntimeError(f"conflicting checksums for {args.source}: {sorted(expected)}")
    part = scratch / (SNAPSHOT + ".part")
    store.get_file(key, part)
    digest = sha256_file(part)
    if expected and digest not in expected:
        part.unlink()
        raise RuntimeError(f"checksum mismatch for {args.source}: got {digest}, want {expected.pop()}")
    part.replace(scratch / SNAPSHOT)
    return f"fetched {args.source} (sha256 {digest}) into {scratch / SNAPSHOT}"


def finish(args: argparse.Namespace) -> str:
    data, scratch = Path(args.data_dir), Path(args.scratch)
    if not _holds_data(data):
        raise RuntimeError(f"{data} is empty: the restore tool wrote nothing")
    shutil.rmtree(scratch, ignore_errors=True)
    return f"restored into {data}; {scratch} removed"


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    try:
        print(fetch(args) if args.step == "fetch" else finish(args))
    except Exception as e:  # noqa: BLE001  (any failure fails the step, with the reason)
        print(f"restore {args.step} failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0
