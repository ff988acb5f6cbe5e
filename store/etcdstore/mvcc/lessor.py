"""What the MVCC store needs from the lessor: to be told which keys a lease holds."""

from __future__ import annotations

from typing import Protocol


class Lessor(Protocol):
    """Called during applies, in apply order, on every member alike.

    A put detaches the key from its previous lease and attaches it to the new one (nothing
    when both are the same); a delete detaches it. After a restart the store reports every
    live leased key with `attach` (see MVCCStore.leased_keys).
    """

    def attach(self, lease_id: int, key: bytes) -> None: ...

    def detach(self, lease_id: int, key: bytes) -> None: ...
