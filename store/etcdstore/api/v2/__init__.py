"""etcd's v2 keys API (and /v2/members, /v2/stats), emulated on the v3 store.

Entry point: `etcdstore.api.v2.http.add_v2_routes(app, server, enabled)`.
"""
