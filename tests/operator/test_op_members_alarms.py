"""Alarms as the operator reads them (issue 14 item 7): AlarmResponse.alarms carry the wire's enum
(`rpc_pb2.AlarmType`, a plain int at run time), compared as the client's `AlarmType`.
`test_op_members_space.py::test_corrupt_alarm_is_never_disarmed` checks the same on a real etcd 3.4."""

from __future__ import annotations

from etcdoperator.members import alarm_summary
from etcdstore.proto.etcdserverpb import rpc_pb2


def _from_wire(*alarms: tuple[int, int]) -> rpc_pb2.AlarmResponse:
    resp = rpc_pb2.AlarmResponse(alarms=[rpc_pb2.AlarmMember(memberID=m, alarm=a) for m, a in alarms])
    return rpc_pb2.AlarmResponse.FromString(resp.SerializeToString())


def test_nospace_and_corrupt_alarms_are_recognised():
    assert alarm_summary(_from_wire().alarms) == ((), False, False)
    assert alarm_summary(_from_wire((0x101, rpc_pb2.NOSPACE)).alarms) == (("NOSPACE on 101",), True, False)
    assert alarm_summary(_from_wire((0x102, rpc_pb2.CORRUPT)).alarms) == (("CORRUPT on 102",), False, True)
    names, nospace, corrupt = alarm_summary(
        _from_wire((0x101, rpc_pb2.NOSPACE), (0x102, rpc_pb2.CORRUPT), (0x103, 7)).alarms
    )
    assert names == ("NOSPACE on 101", "CORRUPT on 102", "7 on 103") and nospace and corrupt
