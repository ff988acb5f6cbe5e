"""The committed protobuf modules must be exactly what the generator produces now."""

from etcdstore.proto import generate
from etcdstore.proto.etcdserverpb import rpc_pb2


def test_generated_modules_are_fresh():
    stale = generate.stale_files()
    assert stale == [], f"run `python -m etcdstore.proto.generate`; stale: {stale}"


def test_method_paths_are_etcds():
    # Clients built for etcd call exactly these paths.
    services = rpc_pb2.DESCRIPTOR.services_by_name
    assert services["KV"].methods_by_name["Range"].full_name == "etcdserverpb.KV.Range"
    assert services["Watch"].methods_by_name["Watch"].full_name == "etcdserverpb.Watch.Watch"
    assert services["Maintenance"].methods_by_name["HashKV"].full_name == "etcdserverpb.Maintenance.HashKV"


def test_known_wire_bytes():
    # A RangeResponse with one KeyValue, encoded by hand from the field numbers in the contract.
    kv = b"\x0a\x01a" + b"\x18\x03" + b"\x2a\x01b"  # key=1, mod_revision=3, value=5
    expected = b"\x12" + bytes([len(kv)]) + kv + b"\x20\x01"  # kvs=2, count=4
    msg = rpc_pb2.RangeResponse(kvs=[{"key": b"a", "value": b"b", "mod_revision": 3}], count=1)
    assert msg.SerializeToString() == expected
