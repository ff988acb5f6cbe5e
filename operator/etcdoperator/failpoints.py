"""Crash injection for tests: ETCDOPERATOR_FAILPOINTS=after-member-add,after-member-remove,...

When a named failpoint is reached the process exits at once (os._exit: no cleanup, no status
write, like a killed pod), so tests can check that a restarted operator converges from what it
finds. Unset in production.
"""

from __future__ import annotations

import logging
import os
import sys

ENV = "ETCDOPERATOR_FAILPOINTS"
EXIT_CODE = 86
KNOWN = frozenset(
    {
        "after-member-add",
        "after-member-remove",
        "after-promote",
        "after-move-leader",
        "after-pvc-delete",
        "after-bootstrap",
    }
)
log = logging.getLogger(__name__)


def enabled() -> frozenset[str]:
    return frozenset(x.strip() for x in os.environ.get(ENV, "").split(",") if x.strip())


def hit(name: str) -> None:
    assert name in KNOWN, name
    if name in enabled():
        log.error("failpoint %s: crashing the operator now", name)
        sys.stderr.flush()
        os._exit(EXIT_CODE)
