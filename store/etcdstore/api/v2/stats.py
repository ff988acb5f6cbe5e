"""The counters /v2/stats/store reports (per member, since it started)."""

from __future__ import annotations

_FIELDS = (
    "getsSuccess",
    "getsFail",
    "setsSuccess",
    "setsFail",
    "deleteSuccess",
    "deleteFail",
    "updateSuccess",
    "updateFail",
    "createSuccess",
    "createFail",
    "compareAndSwapSuccess",
    "compareAndSwapFail",
    "compareAndDeleteSuccess",
    "compareAndDeleteFail",
    "expireCount",
)


class StoreStats:
    __slots__ = ("counts", "watchers")

    def __init__(self) -> None:
        self.counts = dict.fromkeys(_FIELDS, 0)
        self.watchers = 0

    def inc(self, name: str) -> None:
        self.counts[name] += 1

    def to_dict(self) -> dict[str, int]:
        out = dict(self.counts)
        out["watchers"] = self.watchers
        return out
