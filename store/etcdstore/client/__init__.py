"""An asyncio client for etcd's v3 gRPC API (etcd 3.4 and etcdstore), built on grpc.aio.

    from etcdstore.client import Client, Compare, Op, TLSConfig

    async with Client(["127.0.0.1:2379", "127.0.0.1:22379"], timeout=5) as c:
        await c.put("k", "v")
        r = await c.get("k")                      # RangeResponse: r.kvs[0].value == b"v"
        await c.txn([Compare.mod_revision("k") == r.kvs[0].mod_revision],
                    [Op.put("k", "v2")], [Op.get("k")])
        async with await c.watch("dir/", prefix=True) as w:
            async for resp in w:                  # WatchResponse
                ...

Construction (each option next to its clientv3.Config name: docs/client.md)
    Client(endpoints, *, timeout=30.0, tls=None, user=None, password=None, require_leader=False,
           dial_timeout=None, auto_sync_interval=None, health_check_interval=None,
           keepalive_time=None, keepalive_timeout=None, permit_without_stream=False,
           reject_old_cluster=False, max_call_send_size=None, max_call_recv_size=None,
           channel_options=())
    endpoints: a list or a comma-separated string of "host:port", "http://host:port" or
    "https://host:port" (https, or any tls= given, means TLS). tls=TLSConfig(ca_file, cert_file,
    key_file, server_name). user/password: Authenticate, then send the `token` metadata; a call
    answered "invalid auth token" (also "revision of auth store is old", "user name is empty")
    re-authenticates once and is resent. If the server has auth disabled the client works
    without a token. require_leader sends `hasleader: true` (fail fast when the member has no
    leader). timeout is the per-call deadline in seconds (None: none); it does not bound
    streams (watch, observe, snapshot, keepalive) nor lock()/campaign(), which take their own.
    Use `async with` or `await client.close()`. A client belongs to the event loop it is first
    used in (gRPC channels are bound to it); construction itself does no I/O. `async with`
    awaits client.connect() when dial_timeout or reject_old_cluster is given (connected to some
    endpoint within dial_timeout, else DEADLINE_EXCEEDED "context deadline exceeded"; cluster
    at least 3.2, else "etcdclient: old cluster version"). auto_sync_interval: the endpoints
    follow MemberList (also by hand: sync_endpoints(), set_endpoints()). keepalive_time /
    keepalive_timeout / permit_without_stream: gRPC keepalive pings (a hung member fails its
    calls and streams with UNAVAILABLE). max_call_send_size / max_call_recv_size: grpc's
    client-side limits (RESOURCE_EXHAUSTED "CLIENT: Sent message larger than max (N vs. M)").

Connections and failover
    One gRPC channel per endpoint, made on first use. Calls go to the current endpoint. On
    UNAVAILABLE a call moves on to the next endpoint (and it becomes the current one) only when
    that cannot apply it twice: idempotent calls (get, read-only txn, status, member_list,
    hash_kv, alarm_list, lease_time_to_live, user/role get/list, ...) and calls that never reached
    a server (connection refused). Such calls go round all endpoints until their deadline
    (pausing 50 ms, 100 ms, ... up to 0.5 s between rounds; at most 20 rounds), so a read survives
    an election. Any other failure of a write (put, delete, txn with writes, compact,
    lease_grant, member_*, ...) is raised at once: its outcome is unknown. An endpoint that
    failed is marked unhealthy for 5 s and tried last; endpoint_health() probes every endpoint
    (as `etcdctl endpoint health`), and health_check_interval does so in the background.
    Views share the connections: `client.at(endpoint)` is pinned to one member with no
    failover and no retry (for per-member calls: status, hash_kv, hash, defragment, alarm_*, snapshot,
    move_leader); `client.with_options(timeout=, require_leader=)` changes options.

Errors
    Every failure is raised as etcdstore.errors.EtcdError(code, message): compare with `==` to
    the constants (`e == errors.COMPACTED`). Deadline exceeded and unavailable are EtcdErrors too
    (codes DEADLINE_EXCEEDED / UNAVAILABLE, gRPC's message). Client-side conditions use the
    "etcdclient:" messages in etcdstore.client.rpc_errors (CLIENT_CLOSED, WATCH_STREAM_CLOSED,
    KEEPALIVE_STREAM_CLOSED). never_reached_server(err) tells a write that certainly was not
    applied (no connection) from one whose outcome is unknown.

Methods (all async; each returns the protobuf response unwrapped; keys/values are bytes or str)
    KV      get(key, *, range_end=None, prefix=False, from_key=False, limit=0, revision=0,
                sort_order=SortOrder.NONE, sort_target=SortTarget.KEY, serializable=False,
                keys_only=False, count_only=False, min_mod_revision=0, max_mod_revision=0,
                min_create_revision=0, max_create_revision=0) -> RangeResponse
            put(key, value, *, lease=0, prev_kv=False, ignore_value=False, ignore_lease=False)
            delete(key, *, range_end=None, prefix=False, from_key=False, prev_kv=False)
            txn(compare=[...], success=[...], failure=[...]) -> TxnResponse
                Compare.version|create_revision|mod_revision|value|lease(key, *, range_end, prefix)
                    compared with ==, !=, <, >;  Op.get/put/delete(...same options...), Op.txn(...)
            compact(revision, physical=False)
    Watch   watch(key, *, range_end=None, prefix=False, from_key=False, start_revision=0,
                  prev_kv=False, filters=(WatchFilter.NOPUT, ...), progress_notify=False,
                  fragment=False, watch_id=0) -> Watcher, returned once etcd confirmed creation.
            All watchers of a view share one gRPC stream (as clientv3 does); it closes when its
            last watcher is canceled. A Watcher is an async iterator of WatchResponse (events,
            progress notifications with header.revision, and a last response with canceled=True
            and compact_revision when etcd cancels it, e.g. start_revision compacted). Fragments
            (fragment=True) are merged back into one response. watcher.cancel() ends iteration;
            watcher.request_progress() asks for a progress notification (sent to every watcher of
            the stream). If the stream breaks (member killed or restarted) the iterator raises
            EtcdError after the buffered responses: there is no silent re-subscription.
    Lease   lease_grant(ttl, id=0), lease_revoke(id), lease_keepalive_once(id),
            lease_keepalive(id, *, on_lost=None) -> LeaseKeeper (background refresh every TTL/3 over
            one LeaseKeepAlive stream; `lost` event, `wait_lost()`, `error`, `ttl`, `close()`),
            lease_time_to_live(id, keys=False), lease_leases()
    Cluster member_add(peer_urls, learner=False), member_remove(id), member_update(id, peer_urls),
            member_list(linearizable=False), member_promote(id)
    Maint.  status(), hash_kv(revision=0), hash(), alarm_list(), alarm_disarm(member_id, alarm),
            alarm_activate(member_id, alarm), defragment(), move_leader(target_id),
            downgrade(action, version) (etcd 3.5+), snapshot() -> async iterator of bytes,
            snapshot_save(path) -> (size, sha256 hex), written to a temp file, fsynced, renamed.
    Auth    auth_enable(), auth_disable(), auth_status() (3.5+), authenticate(name, password),
            user_add(name, password="", *, no_password=False), user_get(name), user_list(),
            user_delete(name), user_change_password(name, password), user_grant_role(user, role),
            user_revoke_role(user, role), role_add(name), role_get(name), role_list(),
            role_delete(name), role_grant_permission(name, key, *, range_end/prefix/from_key,
            perm_type=PermissionType.READWRITE), role_revoke_permission(name, key, *, range_end/...)
    Lock    lock(name, lease, *, timeout=None) -> LockResponse (.key), unlock(key)
    Election campaign(name, lease, value, *, timeout=None) -> CampaignResponse (.leader: LeaderKey),
            proclaim(leader, value), leader(name), observe(name) -> async iterator of
            LeaderResponse, resign(leader)
    (Lock and Election above are etcd's server-side v3lock/v3election services.)

Recipes and helpers (clientv3's packages)
    etcdstore.client.recipes    Session, Mutex, Election (clientv3/concurrency, client-side)
    etcdstore.client.stm        stm(client, apply, isolation=Isolation.SERIALIZABLE_SNAPSHOT)
    etcdstore.client.namespace  Namespace(client, prefix) (clientv3/namespace)
    etcdstore.client.mirror     Syncer(client, prefix, revision), mirror(src, dst, prefix)
"""

from etcdstore.client.channels import Endpoint, TLSConfig
from etcdstore.client.client import MIN_CLUSTER_VERSION, Client, is_old_version
from etcdstore.client.lease import LeaseKeeper
from etcdstore.client.maintenance import DowngradeAction
from etcdstore.client.mirror import Syncer, mirror
from etcdstore.client.namespace import Namespace
from etcdstore.client.recipes import Election, Mutex, Session
from etcdstore.client.requests import (
    AlarmType,
    Compare,
    Op,
    PermissionType,
    SortOrder,
    SortTarget,
    WatchFilter,
    prefix_end,
)
from etcdstore.client.rpc_errors import OLD_CLUSTER, never_reached_server
from etcdstore.client.stm import STM, Isolation, stm
from etcdstore.client.transport import DEFAULT_TIMEOUT
from etcdstore.client.watch import Watcher
from etcdstore.errors import EtcdError

__all__ = [
    "DEFAULT_TIMEOUT",
    "MIN_CLUSTER_VERSION",
    "OLD_CLUSTER",
    "STM",
    "AlarmType",
    "Client",
    "Compare",
    "DowngradeAction",
    "Election",
    "Endpoint",
    "EtcdError",
    "Isolation",
    "LeaseKeeper",
    "Mutex",
    "Namespace",
    "Op",
    "PermissionType",
    "Session",
    "SortOrder",
    "SortTarget",
    "Syncer",
    "TLSConfig",
    "WatchFilter",
    "Watcher",
    "is_old_version",
    "mirror",
    "never_reached_server",
    "prefix_end",
    "stm",
]
