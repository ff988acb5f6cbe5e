"""Throughput of the Raft core alone: ``python -m etcdstore.raft.bench``.

A 3-node group in one process, `MemoryStorage`, messages handed from node to node as
objects (no encoding, no I/O). Each round proposes one batch of 256-byte entries on the
leader and drives every node's Ready loop until all is quiet; an entry counts once the
leader's commit index covers it, and the run checks that every node applied every entry,
in order. A second table shows that the cost per entry does not grow with the length of
the log (the log is pre-filled to different lengths before measuring).
"""

from __future__ import annotations

import argparse
import random
import sys
import time

from etcdstore.raft import codec
from etcdstore.raft.raft import Config
from etcdstore.raft.rawnode import RawNode
from etcdstore.raft.records import ConfChange, ConfChangeType, ConfState, Entry, EntryType, HardState, Role
from etcdstore.raft.storage import MemoryStorage

ENTRY_SIZE = 256
IDS = (1, 2, 3)


class Cluster:
    """Three nodes with an instant, lossless in-process network."""

    def __init__(self, prefill: int = 0) -> None:
        self.storages = {i: MemoryStorage() for i in IDS}
        self.applied = {i: 0 for i in IDS}
        self.applied_count = {i: 0 for i in IDS}
        if prefill:
            self._prefill(prefill)
            self.nodes = {
                i: RawNode(self._config(i, applied=prefill + len(IDS)), self.storages[i]) for i in IDS
            }
            self.applied = {i: prefill + len(IDS) for i in IDS}
        else:
            self.nodes = {i: RawNode.bootstrap(self._config(i), self.storages[i], IDS) for i in IDS}
        self.pump()
        self.nodes[1].campaign()
        self.pump()
        assert self.nodes[1].role == Role.LEADER
        self.leader = self.nodes[1]

    @staticmethod
    def _config(i: int, applied: int = 0) -> Config:
        return Config(i, applied=applied, max_inflight_msgs=256, rng=random.Random(i))

    def _prefill(self, n: int) -> None:
        """Give every node the same durable log of `n` entries (after the membership ones)."""
        conf = [
            Entry(
                1,
                k + 1,
                EntryType.CONF_CHANGE,
                codec.encode_conf_change(ConfChange(ConfChangeType.ADD_NODE, i)),
            )
            for k, i in enumerate(IDS)
        ]
        payload = bytes(ENTRY_SIZE)
        base = len(conf) + 1
        ents = conf + [Entry(1, base + k, EntryType.NORMAL, payload) for k in range(n)]
        last = ents[-1].index
        for i in IDS:
            st = self.storages[i]
            st.append(ents)
            st.set_hard_state(HardState(1, 0, last))
            st.create_snapshot(len(conf), ConfState(IDS), b"")  # membership comes from the snapshot

    def pump(self) -> None:
        nodes, storages, applied, counts = self.nodes, self.storages, self.applied, self.applied_count
        busy = True
        while busy:
            busy = False
            for i, node in nodes.items():
                if not node.has_ready():
                    continue
                busy = True
                rd = node.ready()
                st = storages[i]
                if rd.snapshot is not None:
                    st.apply_snapshot(rd.snapshot)
                if rd.entries:
                    st.append(rd.entries)
                if rd.hard_state is not None:
                    st.set_hard_state(rd.hard_state)
                for m in rd.messages:
                    nodes[m.to].step(m)
                ents = rd.committed_entries
                if ents:
                    if ents[0].index != applied[i] + 1:
                        raise AssertionError(
                            f"node {i} applied out of order: {ents[0].index} after {applied[i]}"
                        )
                    for e in ents:
                        if e.type == EntryType.CONF_CHANGE:
                            node.apply_conf_change(codec.decode_conf_change(e.data))
                    applied[i] = ents[-1].index
                    counts[i] += len(ents)
                node.advance(rd)

    def run(self, batch: int, seconds: float, max_entries: int) -> tuple[int, float, float, int]:
        """Propose batches for about `seconds`; returns (entries, cpu seconds, wall seconds, rounds).

        CPU time of this process is what counts (the machine may be shared); every entry
        proposed must be committed by the leader and applied by every node at the end."""
        payloads = [random.Random(batch).randbytes(ENTRY_SIZE) for _ in range(batch)]
        leader = self.leader
        start_commit = leader.commit_index
        rounds = proposed = 0
        c0, t0 = time.process_time(), time.perf_counter()
        deadline = c0 + seconds
        while proposed < max_entries:
            leader.propose_batch(payloads)
            proposed += batch
            self.pump()
            rounds += 1
            if rounds & 15 == 0 and time.process_time() > deadline:  # (the clock read is a syscall)
                break
        cpu, wall = time.process_time() - c0, time.perf_counter() - t0
        committed = leader.commit_index - start_commit
        for i in IDS:
            if self.applied[i] != leader.commit_index:
                raise AssertionError(
                    f"node {i} applied {self.applied[i]}, leader committed {leader.commit_index}"
                )
        if committed < proposed:
            raise AssertionError(f"only {committed} of {proposed} proposed entries committed")
        return committed, cpu, wall, rounds


def throughput_table(batches: list[int], seconds: float) -> list[tuple[int, int, float, float]]:
    rows = []
    for b in batches:
        c = Cluster()
        c.run(b, min(0.2, seconds), 10_000)  # warm up
        committed, cpu, wall, _ = c.run(b, seconds, 50_000_000)
        rows.append((b, committed, committed / cpu, committed / wall))
    return rows


def log_length_table(lengths: list[int], batch: int, seconds: float) -> list[tuple[int, float, float]]:
    rows = []
    for n in lengths:
        c = Cluster(prefill=n)
        c.run(batch, 0.2, 2_000)
        start = c.leader.raft.log.last_index()
        # A fixed amount of work, small next to the log, so both logs keep their length;
        # best of three to damp noise from other load on the machine.
        best = min((c.run(batch, 1e9, 10_000) for _ in range(3)), key=lambda r: r[1] / r[0])
        committed, cpu, _, rounds = best
        rows.append((start, cpu / committed * 1e6, cpu / rounds * 1e6))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=2.0, help="measuring time per row")
    ap.add_argument("--batches", default="1,10,100,1000")
    ap.add_argument("--log-lengths", default="10000,1000000")
    ap.add_argument("--log-batch", type=int, default=100)
    args = ap.parse_args(argv)
    batches = [int(x) for x in args.batches.split(",") if x]
    lengths = [int(x) for x in args.log_lengths.split(",") if x]

    print(
        f"3-node group, {ENTRY_SIZE}-byte entries, in-process, no I/O; rates per CPU second of this process"
    )
    print("(an entry counts once the leader commits it; every node must have applied all of them)")
    print(f"{'batch':>7} {'entries':>10} {'entries/s':>12} {'wall entries/s':>15}")
    for b, committed, rate, wall_rate in throughput_table(batches, args.seconds):
        print(f"{b:>7} {committed:>10} {rate:>12,.0f} {wall_rate:>15,.0f}")
    if lengths:
        print(f"\ncost vs. log length (batch {args.log_batch}; one round = propose + all Readys until quiet)")
        print(f"{'log length':>12} {'us/entry':>10} {'us/round':>10}   (best of 3 x 10,000 entries)")
        rows = log_length_table(lengths, args.log_batch, args.seconds)
        for n, us, us_round in rows:
            print(f"{n:>12,} {us:>10.2f} {us_round:>10.1f}")
        if len(rows) > 1:
            print(f"per-entry cost ratio, longest/shortest log: {rows[-1][1] / rows[0][1]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
