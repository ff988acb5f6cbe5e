"""Where backup files live: a directory (a mounted PVC) or an S3-compatible bucket.

Locations are URLs: `file:///backup/some/dir` or `s3://bucket/prefix` (S3 options apart). Keys
are relative, '/'-separated. S3 goes through boto3 (imported only when an s3:// URL is used).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit


class ObjectStore(Protocol):
    def put_file(self, key: str, path: Path, *, sha256: str) -> None: ...
    def get_file(self, key: str, path: Path) -> None: ...
    def put_bytes(self, key: str, data: bytes) -> None: ...
    def get_bytes(self, key: str) -> bytes | None: ...
    def list(self, prefix: str) -> list[str]: ...
    def delete(self, key: str) -> None: ...
    def describe(self, key: str) -> str: ...


@dataclass(frozen=True, slots=True)
class S3Options:
    endpoint: str | None = None
    region: str = "us-east-1"
    path_style: bool = True


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class DirectoryStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        p = (self.root / key).resolve()
        if self.root.resolve() not in p.parents and p != self.root.resolve():
            raise ValueError(f"key {key!r} escapes {self.root}")
        return p

    def put_file(self, key: str, path: Path, *, sha256: str) -> None:
        dst = self._path(key)
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.part")
        shutil.copyfile(path, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        if sha256_file(tmp) != sha256:
            tmp.unlink()
            raise OSError(f"checksum mismatch writing {dst}")
        os.replace(tmp, dst)
        _fsync_dir(dst.parent)

    def get_file(self, key: str, path: Path) -> None:
        shutil.copyfile(self._path(key), path)

    def put_bytes(self, key: str, data: bytes) -> None:
        dst = self._path(key)
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.part")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dst)
        _fsync_dir(dst.parent)

    def get_bytes(self, key: str) -> bytes | None:
        p = self._path(key)
        return p.read_bytes() if p.exists() else None

    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix) if prefix else self.root
        if not base.exists():
            return []
        return sorted(
            str(p.relative_to(self.root))
            for p in base.rglob("*")
            if p.is_file() and not p.name.startswith(".")
        )

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def describe(self, key: str) -> str:
        return str(self._path(key))


class S3Store:
    def __init__(self, bucket: str, opts: S3Options) -> None:
        import boto3  # only backup/restore containers need it
        from botocore.config import Config

        self.bucket = bucket
        self.client = boto3.client(
            "s3",
            endpoint_url=opts.endpoint or None,
            region_name=opts.region,
            config=Config(
                s3={"addressing_style": "path" if opts.path_style else "auto"},
                retries={"max_attempts": 5, "mode": "standard"},
            ),
        )

    def put_file(self, key: str, path: Path, *, sha256: str) -> None:
        self.client.upload_file(str(path), self.bucket, key, ExtraArgs={"Metadata": {"sha256": sha256}})
        head = self.client.head_object(Bucket=self.bucket, Key=key)
        if head.get("ContentLength") != path.stat().st_size:
            raise OSError(f"upload of s3://{self.bucket}/{key} is incomplete")

    def get_file(self, key: str, path: Path) -> None:
        self.client.download_file(self.bucket, key, str(path))

    def put_bytes(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data)

    def get_bytes(self, key: str) -> bytes | None:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except self.client.exceptions.NoSuchKey:
            return None

    def list(self, prefix: str) -> list[str]:
        keys: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            keys += [o["Key"] for o in page.get("Contents", [])]
        return sorted(keys)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=key)

    def describe(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"


def open_location(url: str, s3: S3Options | None = None) -> tuple[ObjectStore, str]:
    """(store, key prefix) for a location URL."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        return DirectoryStore(Path(parts.path or "/")), ""
    if parts.scheme == "s3":
        return S3Store(parts.netloc, s3 or S3Options()), parts.path.strip("/")
    raise ValueError(f"unsupported location {url!r} (file:// or s3://)")


def open_object(url: str, s3: S3Options | None = None) -> tuple[ObjectStore, str]:
    """(store, key) for one object's URL, e.g. file:///backup/x.db or s3://bucket/dir/x.db."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        p = Path(parts.path)
        return DirectoryStore(p.parent), p.name
    if parts.scheme == "s3":
        return S3Store(parts.netloc, s3 or S3Options()), parts.path.strip("/")
    raise ValueError(f"unsupported location {url!r} (file:// or s3://)")


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
