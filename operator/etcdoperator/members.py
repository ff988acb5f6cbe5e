"""Talking to one cluster's members through the project's client (`etcdstore.client`).

`observe()` builds the EtcdView the planner decides from: the member list (from any voting
member: learners refuse MemberList), and each member's own Status, asked at its own endpoint
so that "healthy" means "this member answers as itself".
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from etcdstore import errors as etcd_errors
from etcdstore.client import Client, TLSConfig
from etcdstore.client.requests import AlarmType
from etcdstore.errors import EtcdError

from etcdoperator import addressing, planner
from etcdoperator.model import EtcdView, MemberState
from etcdoperator.naming import CLIENT_PORT, PEER_PORT, ClusterRef

CALL_TIMEOUT = 3.0
log = logging.getLogger(__name__)


def alarm_summary(alarms: Iterable[Any]) -> tuple[tuple[str, ...], bool, bool]:
    """(each alarm as "NAME on <member>", NOSPACE raised, CORRUPT raised) from AlarmResponse.alarms.
    The wire's enum (`rpc_pb2.AlarmType`, a plain int at run time) is converted to the client's
    `AlarmType` before it is compared, so the comparison is between values of one type."""
    names: list[str] = []
    kinds: set[int] = set()
    for a in alarms:
        kind = int(a.alarm)
        kinds.add(kind)
        try:
            label = AlarmType(kind).name
        except ValueError:  # an alarm this client does not know
            label = str(kind)
        names.append(f"{label} on {a.memberID:x}")
    return tuple(names), AlarmType.NOSPACE in kinds, AlarmType.CORRUPT in kinds


class SpaceNotRecoverable(OSError):
    """NOSPACE with live data that fills the quota: defragmenting would not help; nothing disarmed."""


@dataclass(frozen=True, slots=True)
class Credentials:
    client_tls: bool
    peer_tls: bool
    tls: TLSConfig | None = None
    user: str | None = None
    password: str | None = None


# Waits before a member is defragmented again at the same revision during NOSPACE recovery.
REDEFRAG_SECONDS = 30.0
REDEFRAG_MAX_SECONDS = 600.0


class Members:
    """Member URLs and membership calls for one cluster. Reuses one client (gRPC channels)."""

    def __init__(self, ref: ClusterRef, creds: Credentials) -> None:
        self.ref = ref
        self.creds = creds
        self._client: Client | None = None
        self._client_key: tuple[object, ...] | None = None
        # ordinal -> (revision, when, wait) of its last NOSPACE defragmentation: see recover_space
        self._defragmented: dict[int, tuple[int, float, float]] = {}

    # -- URLs --------------------------------------------------------------------------------
    def client_url(self, ordinal: int) -> str:
        scheme = "https" if self.creds.client_tls else "http"
        return addressing.url(scheme, self.ref.pod_host(ordinal), CLIENT_PORT)

    def peer_url(self, ordinal: int) -> str:
        scheme = "https" if self.creds.peer_tls else "http"
        return addressing.url(scheme, self.ref.pod_host(ordinal), PEER_PORT)

    def ordinal_of(self, name: str, peer_urls: Iterable[str], candidates: Iterable[int]) -> int | None:
        if name:
            k = self.ref.ordinal_of(name)
            if k is not None:
                return k
        urls = set(peer_urls)
        for k in candidates:
            if self.peer_url(k) in urls:
                return k
        return None

    # -- client ------------------------------------------------------------------------------
    def client(self, ordinals: Iterable[int]) -> Client:
        endpoints = [self.client_url(k) for k in sorted(set(ordinals))] or [self.client_url(0)]
        key = (tuple(endpoints), self.creds)
        if self._client is None or self._client_key != key:
            old = self._client
            self._client = Client(
                endpoints,
                timeout=CALL_TIMEOUT,
                tls=self.creds.tls,
                user=self.creds.user,
                password=self.creds.password,
            )
            self._client_key = key
            if old is not None:
                asyncio.get_running_loop().create_task(old.close())
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    # -- observation -------------------------------------------------------------------------
    async def _status(self, client: Client, url: str | None):
        if url is None:
            return None, "no client URL"
        try:
            return await client.at(url).status(), None
        except EtcdError as e:
            return None, e.message

    async def observe(self, ordinals: Iterable[int]) -> EtcdView:
        """Status from every member endpoint, then the member list from the leader.

        The leader's list is authoritative; a member that restarted may serve an older one for a
        while, and acting on that (a member "missing") would be a wrong repair.
        """
        ords = sorted(set(ordinals)) or [0]
        client = self.client(ords)
        t0 = time.monotonic()
        by_ord = dict(
            zip(ords, await asyncio.gather(*(self._status(client, self.client_url(k)) for k in ords)))
        )
        votes = [st.leader for st, _ in by_ord.values() if st is not None and st.leader]
        leader_id = max(set(votes), key=votes.count) if votes else None
        sources = sorted(
            (k for k, (st, _) in by_ord.items() if st is not None and not getattr(st, "isLearner", False)),
            key=lambda k: by_ord[k][0].header.member_id != leader_id,
        )
        listing = None
        errors = [f"{self.ref.pod(k)}: {err}" for k, (st, err) in by_ord.items() if st is None]
        for k in sources:
            try:
                listing = await client.at(self.client_url(k)).member_list()
                break
            except EtcdError as e:
                errors.append(f"{self.ref.pod(k)}: {e.message}")
        if listing is None:
            return EtcdView(reachable=False, error="; ".join(errors) or "no member answers")
        candidates = range(max(ords + [9]) + 8)
        raw = list(listing.members)
        ordinals_of = [self.ordinal_of(m.name, m.peerURLs, candidates) for m in raw]
        # Members outside the observed ordinals (or not ours) are asked at their advertised URL.
        extra = await asyncio.gather(
            *(
                self._status(client, m.clientURLs[0] if m.clientURLs else None)
                for m, k in zip(raw, ordinals_of)
                if k is None or k not in by_ord
            )
        )
        extra_it = iter(extra)
        t1 = time.monotonic()
        members: list[MemberState] = []
        cluster_ids: set[int] = set()
        listed = {m.ID for m in raw}
        for m, ordinal in zip(raw, ordinals_of):
            st, err = by_ord[ordinal] if ordinal is not None and ordinal in by_ord else next(extra_it)
            healthy = st is not None and st.header.member_id == m.ID
            if not healthy:
                st = None  # that endpoint answered as someone else: nothing it says is about m
            if st is not None and st.header.cluster_id:
                cluster_ids.add(st.header.cluster_id)
            members.append(
                MemberState(
                    id=m.ID,
                    name=m.name,
                    peer_urls=tuple(m.peerURLs),
                    client_urls=tuple(m.clientURLs),
                    learner=m.isLearner,
                    ordinal=ordinal,
                    healthy=healthy,
                    revision=st.header.revision if st is not None else None,
                    raft_index=st.raftIndex if st is not None else None,
                    raft_applied_index=getattr(st, "raftAppliedIndex", None) if st is not None else None,
                    version=st.version if st is not None else None,
                    db_size=st.dbSize if st is not None else None,
                    db_size_in_use=(st.dbSizeInUse or None) if st is not None else None,
                    errors=tuple(st.errors) if st is not None else ((err,) if err else ()),
                    cluster_id=st.header.cluster_id if st is not None else None,
                )
            )
        if listing.header.cluster_id:
            cluster_ids.add(listing.header.cluster_id)
        # A pod answering, in this cluster, as a member the list does not have: the list is stale
        # or the member is being removed; either way membership must not change now.
        unlisted = tuple(
            sorted(
                k
                for k, (st, _) in by_ord.items()
                if st is not None
                and st.header.member_id not in listed
                and st.header.cluster_id in cluster_ids
            )
        )
        alarms: tuple[str, ...] = ()
        nospace = corrupt = False
        try:
            alarms, nospace, corrupt = alarm_summary((await client.alarm_list()).alarms)
        except EtcdError:
            pass
        log.debug(
            "[%s/%s] observe: status+list %.2fs alarms %.2fs",
            self.ref.namespace,
            self.ref.name,
            t1 - t0,
            time.monotonic() - t1,
        )
        return EtcdView(
            reachable=True,
            members=tuple(members),
            leader_id=leader_id if leader_id in listed else None,
            cluster_id=next(iter(cluster_ids)) if len(cluster_ids) == 1 else None,
            split_brain=len(cluster_ids) > 1,
            alarms=alarms,
            nospace=nospace,
            corrupt=corrupt,
            unlisted=unlisted,
        )

    # -- membership (through the client of the last observation) ----------------------------
    def current(self) -> Client:
        """The client of the last observation."""
        if self._client is None:
            raise RuntimeError("observe() first")
        return self._client

    async def add_learner(self, ordinal: int) -> int:
        resp = await self.current().member_add([self.peer_url(ordinal)], learner=True)
        return resp.member.ID

    async def promote(self, member_id: int) -> None:
        await self.current().member_promote(member_id)

    async def remove(self, member_id: int) -> None:
        await self.current().member_remove(member_id)

    async def move_leader(self, leader_ordinal: int, target_id: int) -> None:
        await self.current().at(self.client_url(leader_ordinal)).move_leader(target_id)

    async def recover_space(self, order: list[int], quota: int) -> int:
        """NOSPACE recovery as etcd documents it - compact to the current revision, defragment every
        member (`order`: followers first, the leader last), disarm - but NOSPACE is disarmed only if
        the data left fits under the quota with headroom (`planner.space_recoverable`), never
        CORRUPT. A member already defragmented at this revision (an earlier attempt that could not
        free enough; writes are refused meanwhile, so the revision stays) is defragmented again only
        after REDEFRAG_SECONDS, doubling up to REDEFRAG_MAX_SECONDS: a follower compacts in the
        background after applying the compaction (only the member that answered the Compact call
        waits for it), so its first defragmentation may have run before its compaction and measured
        the history that was about to go (seen under load: recovery then never happened).
        Returns the revision; raises SpaceNotRecoverable (nothing disarmed)."""
        client = self.current()
        revision = (await client.status()).header.revision
        try:
            await client.compact(revision, physical=True)
        except EtcdError as e:
            if e != etcd_errors.COMPACTED:
                raise
        size = 0
        for k in order:
            member = client.at(self.client_url(k))
            # dbSizeInUse is only updated by the backend's next commit (there may be none while
            # writes are refused): defragmenting is what measures what the data takes.
            last = self._defragmented.get(k)
            if last is None or last[0] != revision:
                due, wait = True, REDEFRAG_SECONDS
            else:
                due, wait = time.monotonic() >= last[1] + last[2], min(last[2] * 2, REDEFRAG_MAX_SECONDS)
            if due:
                await member.with_options(timeout=120).defragment()
                self._defragmented[k] = (revision, time.monotonic(), wait)
            size = max(size, (await member.status()).dbSize)
        if not planner.space_recoverable(size, quota):
            raise SpaceNotRecoverable(
                f"NOSPACE: the data takes {size} bytes after compaction and defragmentation, quota {quota}: "
                "raise options.quotaBackendBytes (and storage) or delete keys - the alarm stays armed"
            )
        for a in (await client.alarm_list()).alarms:
            if int(a.alarm) == AlarmType.NOSPACE:
                await client.alarm_disarm(a.memberID, AlarmType.NOSPACE)
        return revision
