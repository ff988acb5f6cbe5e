"""`etcdoperator member-gate`: the init container that keeps an empty data dir from starting
under an existing member's identity.

etcd (and the store) started with `--initial-cluster-state=existing` and an empty data dir take
the member ID that the member list holds for their peer URL. For a member whose volume was lost
that is its *old* ID, with an empty log: it forgets its votes and the entries it acknowledged,
which can lose acknowledged writes. So every member pod starts through this gate, which decides
from what it finds on the volume and the bootstrap ConfigMap (read through env vars when the
container starts):

  * the data dir holds a member's data          -> start (the data carries its own member ID);
  * empty, the cluster is being bootstrapped    -> start only the seed (state `new`);
  * empty, the cluster has formed               -> start only with a join ticket for this pod's
                                                   name: the operator writes one right after it
                                                   added a *new* learner at this ordinal, and
                                                   removes it once that learner has started;
  * anything else                               -> refuse (exit 1, the pod retries), saying why.

The operator sees such a member as unhealthy and not holding its volume's ID, removes it (while
the others keep quorum) and adds it back as a new learner with a ticket.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_REFUSED = 1


def has_data(data_dir: Path, engine: str) -> bool:
    """What the engine itself takes as "this member has state" (it then ignores --initial-cluster*)."""
    member = data_dir / "member"
    if engine == "etcd":
        wal = member / "wal"  # etcd: wal.Exist() - any *.wal file
        return wal.is_dir() and any(p.name.endswith(".wal") for p in wal.iterdir())
    db = member / "db"  # etcdstore: its backend (a RocksDB directory), where the member ID is kept
    if db.is_dir():
        return any(db.iterdir())
    return db.is_file() and db.stat().st_size > 0


def parse_tickets(text: str | None) -> dict[str, str]:
    """`pod-name=hex-id[,pod-name=hex-id...]` (the ConfigMap's `join` key) -> {pod name: member ID}."""
    out: dict[str, str] = {}
    for part in (text or "").split(","):
        name, sep, mid = part.strip().partition("=")
        if sep and name and mid:
            out[name] = mid
    return out


def format_tickets(tickets: dict[str, str]) -> str:
    return ",".join(f"{name}={mid}" for name, mid in sorted(tickets.items()))


def decide(*, data: bool, state: str, name: str, seed: str, tickets: dict[str, str]) -> tuple[bool, str]:
    """(start?, why). Pure: the whole safety rule of a member start."""
    if data:
        return True, "the data dir holds this member's data"
    if state == "new":
        if name == seed:
            return True, "empty data dir: the seed bootstraps the cluster"
        return False, f"empty data dir while the cluster is bootstrapping: only the seed {seed} starts now"
    if name in tickets:
        return True, f"empty data dir: joining as the new member {tickets[name]} the operator just added"
    return False, (
        "empty data dir and no join ticket: refusing to start under this member's old ID (its data is "
        "gone); the operator removes it and adds it back as a new member"
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="etcdoperator member-gate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--engine", choices=["etcd", "etcdstore"], required=True)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--name", required=True, help="this pod's member name")
    p.add_argument("--seed", required=True, help="the member that bootstraps the cluster")
    p.add_argument("--initial-cluster-state", required=True)
    p.add_argument("--join", default="", help="join tickets: name=hexid,...")
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    data = has_data(Path(args.data_dir), args.engine)
    ok, why = decide(
        data=data,
        state=args.initial_cluster_state,
        name=args.name,
        seed=args.seed,
        tickets=parse_tickets(args.join),
    )
    print(
        f"member-gate {args.name}: {'start' if ok else 'refused'}: {why}",
        file=sys.stdout if ok else sys.stderr,
    )
    return 0 if ok else EXIT_REFUSED
