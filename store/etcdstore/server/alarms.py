"""Replicated alarms (NOSPACE, CORRUPT), as etcd keeps them: per member, persisted, applied via Raft."""

from __future__ import annotations

import struct

from etcdstore.storage import backend as bk

_KEY = struct.Struct(">QI")


class Alarms:
    def __init__(self, backend: bk.Backend) -> None:
        self._active: set[tuple[int, int]] = set()
        for key, _ in backend.items(bk.ALARM):
            self._active.add(_KEY.unpack(key))

    def active(self, alarm: int) -> bool:
        return any(a == alarm for _, a in self._active)

    def any(self) -> bool:
        return bool(self._active)

    def activate(self, batch: bk.Batch, member_id: int, alarm: int) -> bool:
        if (member_id, alarm) in self._active:
            return False
        self._active.add((member_id, alarm))
        batch.put(bk.ALARM, _KEY.pack(member_id, alarm), b"")
        return True

    def deactivate(self, batch: bk.Batch, member_id: int, alarm: int) -> bool:
        if (member_id, alarm) not in self._active:
            return False
        self._active.discard((member_id, alarm))
        batch.delete(bk.ALARM, _KEY.pack(member_id, alarm))
        return True

    def list(self, alarm: int = 0) -> list[tuple[int, int]]:
        """Active (member, alarm) pairs; alarm 0 (NONE) means all kinds."""
        return sorted(p for p in self._active if alarm == 0 or p[1] == alarm)
