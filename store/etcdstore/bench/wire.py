"""Request bytes built by hand, once: the benchmark's hot loop never touches protobuf objects.

Field numbers are etcd's (rpc.proto): PutRequest key=1 value=2; RangeRequest key=1
serializable=7; DeleteRangeRequest key=1; TxnRequest success=2; RequestOp request_put=2. tests/client checks that these
bytes equal what the generated classes serialize.
"""

from __future__ import annotations


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field_bytes(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def key_bytes(index: int, key_size: int, prefix: bytes = b"") -> bytes:
    """Key number `index` of the key space: `prefix` + big-endian index, key_size bytes in all."""
    width = key_size - len(prefix)
    if width < 1 or index >= 1 << (8 * width):
        raise ValueError(f"key size {key_size} (prefix {len(prefix)} bytes) too small for key {index}")
    return prefix + index.to_bytes(width, "big")


def put_request(key: bytes, value: bytes) -> bytes:
    return field_bytes(1, key) + field_bytes(2, value)


def range_request(key: bytes, serializable: bool) -> bytes:
    return field_bytes(1, key) + (b"\x38\x01" if serializable else b"")


def delete_range_request(key: bytes) -> bytes:
    """DeleteRangeRequest of the one key `key` (no range_end, no prev_kv)."""
    return field_bytes(1, key)


def txn_put_request(puts: list[tuple[bytes, bytes]]) -> bytes:
    """A TxnRequest with no compares whose success branch is these puts (etcd's txn-put)."""
    return b"".join(field_bytes(2, field_bytes(2, put_request(k, v))) for k, v in puts)


def watch_create_request(key: bytes, range_end: bytes) -> bytes:
    """WatchRequest{create_request: WatchCreateRequest{key, range_end}}."""
    return field_bytes(1, field_bytes(1, key) + field_bytes(2, range_end))
