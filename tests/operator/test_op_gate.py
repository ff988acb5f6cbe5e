"""The member gate (issue 14 item 2): an empty data dir never starts under an existing member ID.

`decide` is the whole rule; `has_data` is checked against data dirs made by real etcd 3.4 (what
etcd itself takes as "this member has state": a WAL file).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
from etcdoperator import gate
from etcdoperator.build.bootstrap import KEY_JOIN
from etcdoperator.cli import main as cli_main
from testlib import Member, eventually, free_port, have_etcd


@pytest.mark.parametrize(
    ("data", "state", "name", "tickets", "ok"),
    [
        (True, "existing", "c-1", {}, True),  # its own data: etcd ignores --initial-cluster*
        (True, "new", "c-2", {}, True),
        (False, "new", "c-0", {}, True),  # the seed bootstraps
        (False, "new", "c-1", {}, False),  # nobody else bootstraps
        (False, "new", "c-1", {"c-1": "abc"}, False),
        (False, "existing", "c-0", {}, False),  # the seed's volume is lost after forming: no
        (False, "existing", "c-1", {}, False),  # a lost volume: never under the old ID
        (False, "existing", "c-1", {"c-2": "abc"}, False),  # someone else's ticket
        (False, "existing", "c-1", {"c-1": "abc"}, True),  # the learner just added
    ],
)
def test_decide(data, state, name, tickets, ok):
    assert gate.decide(data=data, state=state, name=name, seed="c-0", tickets=tickets)[0] is ok


def test_tickets_round_trip():
    t = {"c-1": "8e9e05c52164694d", "c-3": "1"}
    assert gate.parse_tickets(gate.format_tickets(t)) == t
    assert gate.parse_tickets("") == {} and gate.parse_tickets("$(JOIN_TICKETS)") == {}
    assert KEY_JOIN == "join"


def _start_until_data(data: Path, binary: str, engine: str) -> None:
    """Run a single member of `binary` on `data` until `has_data(data, engine)`, then stop it."""
    with Member("m", data, free_port(), free_port(), binary=binary) as m:
        m.spawn()
        eventually(lambda: gate.has_data(data, engine), 20, message=f"{engine} state in {data}")
        m.stop()


@pytest.mark.skipif(not have_etcd(), reason="etcd not installed")
def test_has_data_matches_what_real_etcd_writes(tmp_path):
    data = tmp_path / "data"
    assert not gate.has_data(data, "etcd")
    (data / "member" / "snap").mkdir(parents=True)  # a start that died before its WAL: no state
    assert not gate.has_data(data, "etcd")
    shutil.rmtree(data)
    _start_until_data(data, "etcd", "etcd")
    assert gate.has_data(data, "etcd")
    assert not gate.has_data(data, "etcdstore")  # another engine's layout is not its data


def test_has_data_etcdstore_layout(tmp_path):
    data = tmp_path / "data"
    (data / "member").mkdir(parents=True)
    assert not gate.has_data(data, "etcdstore")
    (data / "member" / "db").write_bytes(b"")
    assert not gate.has_data(data, "etcdstore")
    (data / "member" / "db").write_bytes(b"x" * 4096)
    assert gate.has_data(data, "etcdstore")
    (data / "member" / "db").unlink()
    (data / "member" / "db").mkdir()  # the store's backend is a RocksDB directory
    assert not gate.has_data(data, "etcdstore")
    (data / "member" / "db" / "CURRENT").write_text("MANIFEST-000005\n")
    assert gate.has_data(data, "etcdstore")


def test_command_exit_codes(tmp_path, capsys):
    base = ["member-gate", "--engine=etcd", f"--data-dir={tmp_path / 'd'}", "--seed=c-0"]
    assert cli_main([*base, "--name=c-1", "--initial-cluster-state=existing", "--join="]) == gate.EXIT_REFUSED
    assert "refusing to start under this member's old ID" in capsys.readouterr().err
    assert cli_main([*base, "--name=c-1", "--initial-cluster-state=existing", "--join=c-1=abc"]) == 0
    assert cli_main([*base, "--name=c-0", "--initial-cluster-state=new", "--join="]) == 0
    wal = Path(tmp_path / "d" / "member" / "wal")
    wal.mkdir(parents=True)
    (wal / "0000000000000000-0000000000000000.wal").write_bytes(b"\0" * 64)
    assert cli_main([*base, "--name=c-1", "--initial-cluster-state=existing", "--join="]) == 0


STORE = shutil.which("etcdstore") or str(Path(sys.executable).parent / "etcdstore")


@pytest.mark.skipif(not os.path.exists(STORE), reason="etcdstore not installed")
def test_has_data_matches_what_the_store_writes(tmp_path):
    data = tmp_path / "data"
    assert not gate.has_data(data, "etcdstore")
    _start_until_data(data, STORE, "etcdstore")
    assert gate.has_data(data, "etcdstore")
    assert not gate.has_data(data, "etcd")
