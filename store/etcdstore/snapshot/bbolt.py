"""bbolt's file format: a streaming writer and a page-by-page reader.

etcd keeps its state in a bbolt database and its snapshots are that file (plus a sha256).
No maintained Python library reads or writes bbolt files (PyPI's only one, `boltdb` 0.0.2 from
2020, is an unfinished port), so this module implements the on-disk format of go.etcd.io/bbolt
1.3 (the version etcd 3.4 uses), as its page.go, node.go, bucket.go, freelist.go and db.go lay it
out. All integers are little-endian (amd64, where bbolt writes its structs as they are in memory).

    page        header: id u64 | flags u16 | count u16 | overflow u32      (16 bytes)
                a page spans 1 + overflow consecutive pages of pageSize bytes
    meta page   (flags 0x04, pages 0 and 1) after the header: magic 0xED0CDAED u32 | version 2 u32 |
                pageSize u32 | flags u32 | root bucket {root pgid u64, sequence u64} |
                freelist pgid u64 | pgid (high water mark) u64 | txid u64 | checksum u64
                (FNV-64a of the 56 bytes before it); the valid meta with the higher txid wins
    branch page (flags 0x01) `count` elements {pos u32, ksize u32, pgid u64}, then the keys;
                pos is relative to the element's own offset; the key is the child's first key
    leaf page   (flags 0x02) `count` elements {flags u32, pos u32, ksize u32, vsize u32}, then
                each key followed by its value; element flag 0x01 marks a nested bucket
    bucket      a leaf value {root pgid u64, sequence u64}; root 0 means an inline bucket whose
                leaf page (header with id 0, then elements) follows the 16 bytes
    freelist    (flags 0x10) `count` page ids u64; count 0xFFFF means the real count is the
                first u64

The writer emits pages in order (leaves, then the branch pages above them as they fill), so a
bucket of any size streams through with memory bounded by the tree's height; it writes the meta
pages last. The reader follows the tree from the newest valid meta page and reads one page at a
time; `check` does what bbolt's Tx.Check does (every page below the high water mark is reachable
exactly once or free).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Iterator
from typing import BinaryIO, Final, Self

MAGIC: Final = 0xED0CDAED
VERSION: Final = 2
PAGE_SIZE: Final = 4096  # os.Getpagesize() on the machines etcd runs on

BRANCH_PAGE: Final = 0x01
LEAF_PAGE: Final = 0x02
META_PAGE: Final = 0x04
FREELIST_PAGE: Final = 0x10
BUCKET_LEAF_FLAG: Final = 0x01
NO_FREELIST: Final = 0xFFFFFFFFFFFFFFFF

_PAGE = struct.Struct("<QHHI")
_LEAF = struct.Struct("<IIII")
_BRANCH = struct.Struct("<IIQ")
_META = struct.Struct("<IIIIQQQQQ")  # everything the checksum covers (56 bytes)
_U64 = struct.Struct("<Q")
_BUCKET = struct.Struct("<QQ")
HEADER: Final = _PAGE.size  # 16
ELEMENT: Final = 16  # both element kinds are 16 bytes


class BoltError(ValueError):
    """A file that is not a bbolt database, or a damaged one."""


def fnv64a(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def meta_bytes(page_size: int, root: int, freelist: int, hwm: int, txid: int, pgid: int) -> bytes:
    """One meta page (page id `pgid`), checksummed, padded to the page size."""
    body = _META.pack(MAGIC, VERSION, page_size, 0, root, 0, freelist, hwm, txid)
    page = _PAGE.pack(pgid, META_PAGE, 0, 0) + body + _U64.pack(fnv64a(body))
    return page + bytes(page_size - len(page))


def _leaf_body(items: list[tuple[bytes, bytes, int]]) -> bytes:
    """The elements and data of a leaf page (without its page header)."""
    n = len(items)
    heads = bytearray()
    data = bytearray()
    for i, (k, v, flags) in enumerate(items):
        pos = ELEMENT * (n - i) + len(data)
        heads += _LEAF.pack(flags, pos, len(k), len(v))
        data += k
        data += v
    return bytes(heads + data)


def _branch_body(items: list[tuple[bytes, int]]) -> bytes:
    n = len(items)
    heads = bytearray()
    data = bytearray()
    for i, (k, child) in enumerate(items):
        heads += _BRANCH.pack(ELEMENT * (n - i) + len(data), len(k), child)
        data += k
    return bytes(heads + data)


class _Level:
    __slots__ = ("flushed", "items", "size")

    def __init__(self) -> None:
        self.items: list = []
        self.size = HEADER
        self.flushed = 0


class Writer:
    """Writes a bbolt database to `f` (a new, empty, seekable file) page by page.

    Buckets are added in byte order of their names, each with its (key, value) pairs in byte
    order of the keys (as bbolt keeps them); `finish` writes the root bucket, an empty freelist
    and the two meta pages, and returns the database's size (high water mark * page size).
    """

    def __init__(self, f: BinaryIO, page_size: int = PAGE_SIZE) -> None:
        self.f = f
        self.ps = page_size
        self.next_pgid = 2  # pages 0 and 1 are the meta pages, written last
        self._root: list[tuple[bytes, bytes, int]] = []
        f.seek(0)
        f.write(bytes(2 * page_size))

    def _write_page(self, flags: int, count: int, body: bytes) -> int:
        pgid = self.next_pgid
        size = HEADER + len(body)
        pages = max(1, -(-size // self.ps))
        self.f.write(_PAGE.pack(pgid, flags, count, pages - 1))
        self.f.write(body)
        pad = pages * self.ps - size
        if pad:
            self.f.write(bytes(pad))
        self.next_pgid += pages
        return pgid

    def _tree(self, items: Iterable[tuple[bytes, bytes, int]]) -> int:
        """Write a bucket's B+tree (leaves packed full, branches above them); returns its root pgid."""
        ps = self.ps
        levels = [_Level()]

        def flush(depth: int) -> None:
            lvl = levels[depth]
            if depth == 0:
                pgid = self._write_page(LEAF_PAGE, len(lvl.items), _leaf_body(lvl.items))
            else:
                pgid = self._write_page(BRANCH_PAGE, len(lvl.items), _branch_body(lvl.items))
            first = lvl.items[0][0]
            lvl.items = []
            lvl.size = HEADER
            lvl.flushed += 1
            if depth + 1 == len(levels):
                levels.append(_Level())
            push(depth + 1, (first, pgid), ELEMENT + len(first))

        def push(depth: int, item: tuple, size: int) -> None:
            lvl = levels[depth]
            if lvl.items and lvl.size + size > ps:
                flush(depth)
            lvl.items.append(item)
            lvl.size += size

        leaf = levels[0]
        for item in items:
            size = ELEMENT + len(item[0]) + len(item[1])
            if leaf.items and leaf.size + size > ps:
                flush(0)
            leaf.items.append(item)
            leaf.size += size
        if not leaf.items and not leaf.flushed:
            return self._write_page(LEAF_PAGE, 0, b"")
        depth = 0
        while True:
            lvl = levels[depth]
            if depth > 0 and lvl.flushed == 0 and len(lvl.items) == 1:
                return lvl.items[0][1]
            if lvl.items:
                flush(depth)
            depth += 1

    def add_bucket(self, name: bytes, items: Iterable[tuple[bytes, bytes]]) -> int:
        """Add a top-level bucket; returns how many keys it holds. Small buckets are written
        inline in their parent's leaf as bbolt does (at most pageSize/4 bytes, no sub-buckets)."""
        if self._root and name <= self._root[-1][0]:
            raise ValueError(f"buckets must be added in order: {name!r} after {self._root[-1][0]!r}")
        it = iter(items)
        head: list[tuple[bytes, bytes, int]] = []
        size = HEADER
        limit = self.ps // 4
        count = 0
        for k, v in it:
            if not k:
                raise ValueError("bbolt keys cannot be empty")
            if head and k <= head[-1][0]:
                raise ValueError(f"keys of bucket {name!r} must be added in order")
            head.append((k, v, 0))
            count += 1
            size += ELEMENT + len(k) + len(v)
            if size > limit:
                break
        else:
            value = _BUCKET.pack(0, 0) + _PAGE.pack(0, LEAF_PAGE, len(head), 0) + _leaf_body(head)
            self._root.append((name, value, BUCKET_LEAF_FLAG))
            return count

        def rest() -> Iterator[tuple[bytes, bytes, int]]:
            nonlocal count
            yield from head
            prev = head[-1][0]
            for k, v in it:
                if k <= prev:
                    raise ValueError(f"keys of bucket {name!r} must be added in order")
                prev = k
                count += 1
                yield k, v, 0

        root = self._tree(rest())
        self._root.append((name, _BUCKET.pack(root, 0), BUCKET_LEAF_FLAG))
        return count

    def finish(self, txid: int = 2) -> int:
        root = self._tree(self._root)
        freelist = self._write_page(FREELIST_PAGE, 0, b"")
        hwm = self.next_pgid
        self.f.seek(0)
        # As bbolt's Tx.WriteTo: the same meta twice, page 1 with the lower transaction id.
        self.f.write(meta_bytes(self.ps, root, freelist, hwm, txid, 0))
        self.f.write(meta_bytes(self.ps, root, freelist, hwm, txid - 1, 1))
        self.f.seek(hwm * self.ps)
        self.f.truncate()
        return hwm * self.ps


class Meta:
    __slots__ = ("flags", "freelist", "page_size", "pgid", "root", "txid")

    def __init__(self, page_size: int, flags: int, root: int, freelist: int, pgid: int, txid: int) -> None:
        self.page_size = page_size
        self.flags = flags
        self.root = root
        self.freelist = freelist
        self.pgid = pgid
        self.txid = txid


def _parse_meta(raw: bytes) -> Meta:
    if len(raw) < HEADER + _META.size + 8:
        raise BoltError("file is too short for a bbolt meta page")
    body = raw[HEADER : HEADER + _META.size]
    magic, version, page_size, flags, root, _seq, freelist, pgid, txid = _META.unpack(body)
    if magic != MAGIC:
        raise BoltError("invalid database")
    if version != VERSION:
        raise BoltError("version mismatch")
    (checksum,) = _U64.unpack_from(raw, HEADER + _META.size)
    if checksum != 0 and checksum != fnv64a(body):
        raise BoltError("checksum error")
    return Meta(page_size, flags, root, freelist, pgid, txid)


class Reader:
    """A bbolt database file opened read-only (trailing bytes after the database, such as a
    snapshot's sha256, are ignored). Pages are read one at a time with pread."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.fd = os.open(path, os.O_RDONLY)
        try:
            self.file_size = os.fstat(self.fd).st_size
            first = os.pread(self.fd, PAGE_SIZE, 0)
            metas: list[Meta] = []
            errors: list[BoltError] = []
            try:
                metas.append(_parse_meta(first))
            except BoltError as e:
                errors.append(e)
            ps = metas[0].page_size if metas else PAGE_SIZE
            if ps < 512 or ps & (ps - 1):
                raise BoltError(f"invalid page size {ps}")
            try:
                metas.append(_parse_meta(os.pread(self.fd, ps, ps)))
            except BoltError as e:
                errors.append(e)
            if not metas:
                raise errors[0]
            self.meta = max(metas, key=lambda m: m.txid)
            self.page_size = self.meta.page_size
            if self.meta.pgid * self.page_size > self.file_size:
                raise BoltError(
                    f"file size {self.file_size} is below the database size "
                    f"{self.meta.pgid * self.page_size} (truncated)"
                )
            if self.meta.root >= self.meta.pgid:
                raise BoltError(f"root bucket page {self.meta.root} above high water mark {self.meta.pgid}")
        except BaseException:
            os.close(self.fd)
            raise

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def size(self) -> int:
        """The database's size as bbolt's Tx.Size reports it: high water mark * page size."""
        return self.meta.pgid * self.page_size

    def page(self, pgid: int) -> tuple[int, int, int, bytes]:
        """(flags, count, overflow, bytes of the whole page including its header)."""
        if pgid >= self.meta.pgid:
            raise BoltError(f"page {pgid}: out of bounds: {self.meta.pgid}")
        ps = self.page_size
        raw = os.pread(self.fd, ps, pgid * ps)
        if len(raw) < HEADER:
            raise BoltError(f"page {pgid}: truncated")
        pid, flags, count, overflow = _PAGE.unpack_from(raw)
        if pid != pgid:
            raise BoltError(f"page {pgid}: header names page {pid}")
        if overflow:
            if pgid + overflow >= self.meta.pgid:
                raise BoltError(f"page {pgid}: overflow past high water mark")
            raw = os.pread(self.fd, (overflow + 1) * ps, pgid * ps)
            if len(raw) < (overflow + 1) * ps:
                raise BoltError(f"page {pgid}: truncated")
        return flags, count, overflow, raw

    # -- walking buckets ---------------------------------------------------------------------------

    @staticmethod
    def _leaf_items(raw: bytes | memoryview, count: int, base: int = 0) -> Iterator[tuple[bytes, bytes, int]]:
        end = len(raw)
        unpack = _LEAF.unpack_from
        for i in range(count):
            off = base + HEADER + ELEMENT * i
            flags, pos, ksize, vsize = unpack(raw, off)
            start = off + pos
            if start + ksize + vsize > end:
                raise BoltError("leaf element runs past its page")
            yield bytes(raw[start : start + ksize]), bytes(raw[start + ksize : start + ksize + vsize]), flags

    @staticmethod
    def _branch_items(raw: bytes, count: int) -> list[tuple[bytes, int]]:
        out = []
        for i in range(count):
            off = HEADER + ELEMENT * i
            pos, ksize, child = _BRANCH.unpack_from(raw, off)
            if off + pos + ksize > len(raw):
                raise BoltError("branch element runs past its page")
            out.append((raw[off + pos : off + pos + ksize], child))
        return out

    def _walk(
        self, pgid: int, seen: dict[int, int] | None, depth: int = 0
    ) -> Iterator[tuple[bytes, bytes, int]]:
        if depth > 64:
            raise BoltError("tree too deep (page cycle?)")
        flags, count, overflow, raw = self.page(pgid)
        if seen is not None:
            for i in range(overflow + 1):
                seen[pgid + i] = seen.get(pgid + i, 0) + 1
        if flags & LEAF_PAGE:
            yield from self._leaf_items(raw, count)
        elif flags & BRANCH_PAGE:
            for _key, child in self._branch_items(raw, count):
                yield from self._walk(child, seen, depth + 1)
        else:
            raise BoltError(f"page {pgid}: invalid type {flags:#x}")

    def bucket_items(
        self, value: bytes, seen: dict[int, int] | None = None
    ) -> Iterator[tuple[bytes, bytes, int]]:
        """(key, value, flags) of a bucket given its value in the parent bucket, in key order."""
        if len(value) < _BUCKET.size:
            raise BoltError("bucket value too short")
        root, _seq = _BUCKET.unpack_from(value)
        if root == 0:  # inline: a leaf page follows the bucket header
            if len(value) < _BUCKET.size + HEADER:
                raise BoltError("inline bucket too short")
            _pid, flags, count, _ov = _PAGE.unpack_from(value, _BUCKET.size)
            if count and not flags & LEAF_PAGE:
                raise BoltError("inline bucket page is not a leaf")
            yield from self._leaf_items(memoryview(value), count, _BUCKET.size)
            return
        yield from self._walk(root, seen)

    def root_items(self, seen: dict[int, int] | None = None) -> Iterator[tuple[bytes, bytes, int]]:
        yield from self._walk(self.meta.root, seen)

    def buckets(self) -> dict[bytes, bytes]:
        """Top-level bucket name -> its bucket value (the root bucket is small: a few names)."""
        return {k: v for k, v, flags in self.root_items() if flags & BUCKET_LEAF_FLAG}

    def items(self, name: bytes) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) of a top-level bucket (nothing if it does not exist); nested buckets skipped."""
        value = self.buckets().get(name)
        if value is None:
            return
        for k, v, flags in self.bucket_items(value):
            if not flags & BUCKET_LEAF_FLAG:
                yield k, v

    # -- integrity -----------------------------------------------------------------------------------

    def freelist(self) -> list[int]:
        if self.meta.freelist == NO_FREELIST:
            return []
        flags, count, _ov, raw = self.page(self.meta.freelist)
        if not flags & FREELIST_PAGE:
            raise BoltError(f"invalid freelist page: {self.meta.freelist}, page type is {flags:#x}")
        idx = 0
        if count == 0xFFFF:
            (count,) = _U64.unpack_from(raw, HEADER)
            idx = 1
        if HEADER + 8 * (idx + count) > len(raw):
            raise BoltError("freelist runs past its page")
        return list(struct.unpack_from(f"<{count}Q", raw, HEADER + 8 * idx))

    def check(self) -> list[str]:
        """bbolt's Tx.Check: the errors found (empty when the database is sound)."""
        errs: list[str] = []
        try:
            free = self.freelist()
        except BoltError as e:
            return [str(e)]
        freed: set[int] = set()
        for pid in free:
            if pid in freed:
                errs.append(f"page {pid}: already freed")
            freed.add(pid)
        seen: dict[int, int] = {0: 1, 1: 1}
        if self.meta.freelist != NO_FREELIST:
            _f, _c, overflow, _raw = self.page(self.meta.freelist)
            for i in range(overflow + 1):
                seen[self.meta.freelist + i] = 1
        try:
            self._check_bucket(self.meta.root, seen, 0)
        except BoltError as e:
            errs.append(str(e))
        for pid, n in seen.items():
            if n > 1:
                errs.append(f"page {pid}: multiple references")
            if pid in freed and pid > 1:
                errs.append(f"page {pid}: reachable freed")
        if self.meta.freelist == NO_FREELIST:
            return errs  # no synced freelist: bbolt counts every unreachable page as free
        for pid in range(self.meta.pgid):
            if pid not in seen and pid not in freed:
                errs.append(f"page {pid}: unreachable unfreed")
                if len(errs) > 100:
                    break
        return errs

    def _check_bucket(self, root: int, seen: dict[int, int], depth: int) -> None:
        for k, v, flags in self._walk(root, seen):
            if flags & BUCKET_LEAF_FLAG:
                child, _seq = _BUCKET.unpack_from(v)
                if child:
                    if depth > 16:
                        raise BoltError("buckets nested too deep")
                    self._check_bucket(child, seen, depth + 1)
