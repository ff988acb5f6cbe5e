"""Which version changes are allowed: patch releases freely, one minor at a time, no downgrades.

etcd supports upgrading one minor version at a time (3.4 -> 3.5 -> 3.6) and, before 3.6, no
minor downgrade at all; a skipped minor has destroyed clusters in other operators.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class VersionDecision:
    target: str  # the version the members should run
    refused: bool = False
    message: str = ""


def parse(version: str) -> tuple[int, int, int] | None:
    parts = version.strip().lstrip("v").split("-", 1)[0].split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        return None
    return int(parts[0]), int(parts[1]), int(parts[2])


def decide_version(wanted: str, running: str | None) -> VersionDecision:
    """`running` is the lowest version any member reports (None before any member answered)."""
    if running is None:
        return VersionDecision(target=wanted)
    w, r = parse(wanted), parse(running)
    if w is None or r is None:
        return VersionDecision(
            target=running, refused=True, message=f"cannot compare versions {wanted!r} and {running!r}"
        )
    if w[0] != r[0]:
        return VersionDecision(
            target=running, refused=True, message=f"refusing a major version change {running} -> {wanted}"
        )
    if w[1] > r[1] + 1:
        return VersionDecision(
            target=running,
            refused=True,
            message=f"refusing to skip minor versions {running} -> {wanted}: upgrade one minor version at a time",
        )
    if w[1] < r[1]:
        return VersionDecision(
            target=running, refused=True, message=f"refusing a minor version downgrade {running} -> {wanted}"
        )
    return VersionDecision(target=wanted)
