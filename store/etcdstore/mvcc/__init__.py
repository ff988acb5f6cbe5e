"""The MVCC key space (etcd's mvcc package): revisions of every key on RocksDB, the
in-memory key index, write transactions, compaction, hashes, and watches.

Ranges are given as on the wire: `end` None or b"" is the single key, b"\\0" is every
key >= key, anything else is [key, end).
"""

from etcdstore.mvcc.kvstore import KVStore, RangeResult, ReadView, WriteTxn
from etcdstore.mvcc.lessor import Lessor

__all__ = ["KVStore", "Lessor", "RangeResult", "ReadView", "WriteTxn"]
