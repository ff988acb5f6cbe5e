"""etcd's v2 discovery protocol (etcd 3.4's --discovery), spoken to a discovery service.

A discovery URL names a directory of an etcd v2 key space, either on a discovery service
(discovery.etcd.io, which maps `/<token>/...` onto its etcd's `/v2/keys/_etcd/registry/<token>/...`)
or on an etcd with the v2 API (`http://etcd:2379/v2/keys/<dir>`). The directory holds
`_config/size` (how many members the new cluster has) and one key per member, named after the
member's ID in hex, whose value is the member's `name=peerURL,...` list.

A member joining:
  1. reads the size and the registered members; if `size` members other than itself already
     registered, the cluster is full (ErrFullCluster) and it does not register;
  2. creates its own key (create-only: an existing key means it registered before, ErrDuplicateID)
     and waits until the key is visible;
  3. reads the members again (sorted by creation index; a member not among the first `size` finds
     the cluster full) and watches the directory until `size` members registered;
  4. returns the first `size` members' values joined: the initial cluster. Two members of one
     name give ErrDuplicateName.
Connection failures and 5xx answers are retried with etcd's backoff (1 s doubling to 256 s).
"""

from __future__ import annotations

import json
import posixpath
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

from etcdstore.logs import get_logger

log = get_logger("etcdstore.discovery")

# etcd's v2 client: 5 s per request (client.DefaultRequestTimeout); watches wait without limit,
# here in rounds so that a dead connection is noticed.
REQUEST_TIMEOUT = 5.0
WATCH_ROUND = 60.0
MAX_EXPONENTIAL_RETRIES = 8

# The v2 API's error code that the protocol tells apart (etcd's client.ErrorCodeNodeExist).
_NODE_EXIST = 105


class ProtocolError(Exception):
    """One of etcd's v2discovery errors; str() is etcd's message."""


ErrInvalidURL = ProtocolError("discovery: invalid URL")
ErrBadSizeKey = ProtocolError("discovery: size key is bad")
ErrSizeNotFound = ProtocolError("discovery: size key not found")
ErrTokenNotFound = ProtocolError("discovery: token not found")
ErrDuplicateID = ProtocolError("discovery: found duplicate id")
ErrDuplicateName = ProtocolError("discovery: found duplicate name")
ErrFullCluster = ProtocolError("discovery: cluster is full")
ErrTooManyRetries = ProtocolError("discovery: too many retries")
ErrBadDiscoveryEndpoint = ProtocolError("discovery: bad discovery endpoint")


class DiscoveryError(Exception):
    """etcd's etcdserver.DiscoveryError: the step (`join`) and the protocol error."""

    def __init__(self, op: str, err: Exception) -> None:
        super().__init__(f"failed to {op} discovery cluster ({err})")
        self.op = op
        self.err = err


class _ClusterError(Exception):
    """The service could not be reached or answered 5xx (etcd's client.ClusterError): retried."""


class _KeysError(Exception):
    """An error answer of the v2 keys API, worded as etcd's v2 client.Error."""

    def __init__(self, code: int, message: str, cause: str, index: int) -> None:
        super().__init__(f"{code}: {message} ({cause}) [{index}]")
        self.code = code


@dataclass(slots=True)
class Node:
    key: str
    value: str
    created_index: int


def _node(doc: dict) -> Node:
    return Node(str(doc.get("key", "")), str(doc.get("value", "")), int(doc.get("createdIndex", 0)))


class Discovery:
    """One member's view of a discovery directory (etcd's v2discovery.discovery)."""

    def __init__(
        self, durl: str, proxy: str = "", member_id: int = 0, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        parts = urllib.parse.urlsplit(durl)
        self.cluster = parts.path  # the token: the directory's path under the service's root
        self.endpoint = urllib.parse.urlunsplit((parts.scheme, parts.netloc, "", "", ""))
        self.member_id = member_id
        self.retries = 0
        self._sleep = sleep
        handlers: list[urllib.request.BaseHandler] = []
        if proxy:
            proxy_url = proxy if urllib.parse.urlsplit(proxy).scheme.startswith("http") else "http://" + proxy
            log.info("running proxy with discovery", **{"proxy-url": proxy_url})
            handlers.append(urllib.request.ProxyHandler({"http": proxy_url, "https": proxy_url}))
        else:
            handlers.append(urllib.request.ProxyHandler({}))  # as etcd: no proxy unless given
        self._opener = urllib.request.build_opener(*handlers)

    # ---- the v2 keys API ----------------------------------------------------------------------

    def _request(
        self, method: str, key: str, query: dict[str, str], body: dict[str, str] | None, timeout: float
    ) -> tuple[dict, int]:
        url = self.endpoint + urllib.parse.quote(key) + "?" + urllib.parse.urlencode(query)
        data = urllib.parse.urlencode(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/x-www-form-urlencoded")
        try:
            resp = self._opener.open(req, timeout=timeout)
            status, raw, headers = resp.status, resp.read(), resp.headers
        except urllib.error.HTTPError as e:
            status, raw, headers = e.code, e.read(), e.headers
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise _ClusterError(
                f"client: etcd cluster is unavailable or misconfigured; error #0: {reason}"
            ) from None
        if status // 100 == 5:
            raise _ClusterError(f"client: etcd member {self.endpoint} returns server error [{status}]")
        try:
            doc = json.loads(raw)
        except ValueError:
            raise ErrBadDiscoveryEndpoint from None
        if not isinstance(doc, dict):
            raise ErrBadDiscoveryEndpoint
        if status // 100 != 2:
            raise _KeysError(
                int(doc.get("errorCode", 0)),
                str(doc.get("message", "")),
                str(doc.get("cause", "")),
                int(doc.get("index", 0) or 0),
            )
        index = int(headers.get("X-Etcd-Index", "0") or 0)
        return doc, index

    def _get(self, key: str) -> tuple[dict, int]:
        return self._request(
            "GET", key, {"quorum": "false", "recursive": "false", "sorted": "false"}, None, REQUEST_TIMEOUT
        )

    def _self_key(self) -> str:
        return posixpath.join("/", self.cluster.lstrip("/"), f"{self.member_id:x}")

    # ---- the protocol -------------------------------------------------------------------------

    def join_cluster(self, config: str) -> str:
        self.check_cluster()  # fast path: a full cluster fails before registering
        self.create_self(config)
        nodes, size, index = self.check_cluster()
        return nodes_to_cluster(self.wait_nodes(nodes, size, index), size)

    def get_cluster(self) -> str:
        try:
            nodes, size, index = self.check_cluster()
        except _Full as full:
            return nodes_to_cluster(full.nodes, full.size)
        return nodes_to_cluster(self.wait_nodes(nodes, size, index), size)

    def create_self(self, contents: str) -> None:
        try:
            doc, _ = self._request(
                "PUT", self._self_key(), {"prevExist": "false"}, {"value": contents}, REQUEST_TIMEOUT
            )
        except _KeysError as e:
            if e.code == _NODE_EXIST:
                raise ErrDuplicateID from None
            raise ProtocolError(str(e)) from None
        except _ClusterError as e:
            raise ProtocolError(str(e)) from None
        created = int(doc.get("node", {}).get("createdIndex", 0))
        # Make sure the key is visible on the server we talk to.
        self._watch(self._self_key(), created, recursive=False)

    def check_cluster(self) -> tuple[list[Node], int, int]:
        config_key = posixpath.join("/", self.cluster.lstrip("/"), "_config")
        size_key = posixpath.join(config_key, "size")
        try:
            doc, _ = self._get(size_key)
        except _KeysError as e:
            # etcd 3.4 means to answer ErrSizeNotFound here, but its check never matches (it tests for a
            # *client.Error where the client returns a client.Error): it fails with the v2 error itself,
            # "100: Key not found (<dir>) [<index>]". So do we.
            raise ProtocolError(str(e)) from None
        except _ClusterError as e:
            log.warning(
                "failed to get from discovery server",
                **{"discovery-url": self.endpoint, "path": size_key, "error": str(e)},
            )
            return self._check_cluster_retry()
        try:
            size = int(doc.get("node", {}).get("value", ""))
            if size < 0:
                raise ValueError
        except ValueError:
            raise ErrBadSizeKey from None
        try:
            doc, index = self._get(self.cluster)
        except _KeysError as e:
            raise ProtocolError(str(e)) from None
        except _ClusterError as e:
            log.warning(
                "failed to get from discovery server",
                **{"discovery-url": self.endpoint, "path": self.cluster, "error": str(e)},
            )
            return self._check_cluster_retry()
        nodes = [
            _node(n)
            for n in doc.get("node", {}).get("nodes", []) or []
            if posixpath.basename(n.get("key", "")) != "_config"
        ]
        nodes.sort(key=lambda n: n.created_index)
        me = posixpath.basename(self._self_key())
        for i, n in enumerate(nodes):
            if posixpath.basename(n.key) == me:
                break
            if size > 0 and i >= size - 1:  # (etcd: size-1 is unsigned, so size 0 never fills)
                raise _Full(nodes[:size], size)
        return nodes, size, index

    def _backoff(self, step: str) -> None:
        self.retries += 1
        wait = float(1 << min(self.retries, MAX_EXPONENTIAL_RETRIES))
        log.info(
            "retry connecting to discovery service", url=self.endpoint, reason=step, backoff=f"{wait:g}s"
        )
        self._sleep(wait)

    def _check_cluster_retry(self) -> tuple[list[Node], int, int]:
        self._backoff("cluster status check")
        return self.check_cluster()

    def _watch(self, key: str, wait_index: int, recursive: bool) -> tuple[Node, int]:
        """The first change of `key` at or after `wait_index` (a v2 long-poll watch)."""
        query = {"wait": "true", "waitIndex": str(wait_index)}
        if recursive:
            query["recursive"] = "true"
        while True:
            try:
                doc, index = self._request("GET", key, query, None, WATCH_ROUND)
            except _KeysError as e:
                raise ProtocolError(str(e)) from None
            except _ClusterError as e:
                if "timed out" in str(e):
                    continue  # no event this round: wait again from the same index
                raise
            except TimeoutError:
                continue
            if "node" in doc:
                return _node(doc["node"]), index

    def wait_nodes(self, nodes: list[Node], size: int, index: int) -> list[Node]:
        every = list(nodes[:size])
        me = posixpath.basename(self._self_key())
        for n in every:
            if posixpath.basename(n.key) == me:
                log.info(
                    "found self from discovery server", **{"discovery-url": self.endpoint, "member-id": me}
                )
            else:
                log.info(
                    "found peer from discovery server",
                    **{"discovery-url": self.endpoint, "peer": posixpath.basename(n.key)},
                )
        next_index = index + 1
        while len(every) < size:
            log.info(
                "found peers from discovery server; waiting for more",
                **{
                    "discovery-url": self.endpoint,
                    "found-peers": len(every),
                    "needed-peers": size - len(every),
                },
            )
            try:
                node, _ = self._watch(self.cluster, next_index, recursive=True)
            except _ClusterError as e:
                log.error(str(e))
                self._backoff("waiting for other nodes")
                nodes, size, index = self.check_cluster()
                return self.wait_nodes(nodes, size, index)
            next_index = node.created_index + 1 if node.created_index else next_index + 1
            if posixpath.basename(node.key) == "_config" or node.key.endswith("/_config/size"):
                continue
            log.info(
                "found peer from discovery server",
                **{"discovery-url": self.endpoint, "peer": posixpath.basename(node.key)},
            )
            every.append(node)
        log.info(
            "found all needed peers from discovery server",
            **{"discovery-url": self.endpoint, "found-peers": len(every)},
        )
        return every


class _Full(ProtocolError):
    """ErrFullCluster, carrying the first `size` members (what a proxy would use)."""

    def __init__(self, nodes: list[Node], size: int) -> None:
        super().__init__(str(ErrFullCluster))
        self.nodes = nodes
        self.size = size


def is_full(err: BaseException) -> bool:
    return isinstance(err, _Full) or err is ErrFullCluster


def nodes_to_cluster(nodes: list[Node], size: int) -> str:
    text = ",".join(n.value for n in nodes)
    names: set[str] = set()
    for item in text.split(","):
        name, sep, url = item.partition("=")
        parts = urllib.parse.urlsplit(url)
        if not sep or parts.scheme not in ("http", "https", "unix", "unixs") or not parts.netloc:
            raise ErrInvalidURL
        names.add(name)
    if len(names) != size:
        raise ErrDuplicateName
    return text


def join_cluster(durl: str, proxy: str, member_id: int, config: str) -> str:
    """Register this member and wait for the cluster; DiscoveryError("join", ...) on failure."""
    try:
        return Discovery(durl, proxy, member_id).join_cluster(config)
    except ProtocolError as e:
        raise DiscoveryError("join", e) from None
