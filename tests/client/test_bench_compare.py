"""`etcdstore bench compare`: real etcd 3.4 and etcdstore side by side with etcd's own Go benchmark tool.

The smoke runs only check that the command runs, that the table has both servers' columns and that it
leaves no process behind (also when interrupted); no performance is asserted. They need etcd 3.4 and
the Go tool (cached, or built by the shared build script); without either they skip."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO

import pytest
from etcdstore.bench import compare
from testlib import eventually

REPORT = """\r 0 / 2000 B!
Summary:
  Total:\t0.3000 secs.
  Slowest:\t0.0521 secs.
  Fastest:\t0.0004 secs.
  Average:\t0.0142 secs.
  Stddev:\t0.0101 secs.
  Requests/sec:\t6666.6667

Response time histogram:
  0.0004 [1]\t|

Latency distribution:
  10% in 0.0040 secs.
  25% in 0.0070 secs.
  50% in 0.0121 secs.
  75% in 0.0180 secs.
  90% in 0.0260 secs.
  95% in 0.0320 secs.
  99% in 0.0450 secs.
  99.9% in 0.0510 secs.

Error distribution:
  [3]\trpc error: code = Unavailable desc = transport is closing
  [2]\tetcdserver: request timed out
"""


def test_parse_report_of_the_go_tool() -> None:
    r = compare.parse_report(REPORT)
    assert r.rps == pytest.approx(6666.6667)
    assert r.total_s == pytest.approx(0.3)
    assert r.p50_ms == pytest.approx(12.1) and r.p99_ms == pytest.approx(45.0)
    assert r.errors == 5 and r.error_kinds[1] == "etcdserver: request timed out"
    empty = compare.parse_report("Summary:\n  Requests/sec:\t10.0000\n")
    assert (empty.rps, empty.p50_ms, empty.errors) == (10.0, None, 0)


def test_rounds_alternate_and_ratios_pair_rounds() -> None:
    assert [compare.round_order(r) for r in range(3)] == [
        ("etcd", "etcdstore"),
        ("etcdstore", "etcd"),
        ("etcd", "etcdstore"),
    ]
    cell = compare.HEADLINE[0]
    ms = [
        compare.Measurement(cell.id, s, r, rps, 1.0 * r, 2.0 * r, 0, 100, 1.0)
        for r, (e, o) in enumerate([(1000, 500), (2000, 800), (1000, 600)], start=1)
        for s, rps in (("etcd", e), ("etcdstore", o))
    ]
    (row,) = compare.summarize([cell], ms)
    # Ratios pair each round's two runs: 0.5, 0.4, 0.6 -> median 0.50 (0.40-0.60); medians of each column.
    assert [round(x, 2) for x in row["ratios"]] == [0.5, 0.4, 0.6]
    assert row["etcd"]["rps_median"] == 1000 and row["etcdstore"]["rps_median"] == 600
    cells = compare._cells(row)
    assert cells[:6] == ["put", "1", "100", "1,000", "600", "0.50 (0.40-0.60)"]
    assert cells[6] == "2.00 / 4.00"
    md = compare.markdown_table(compare.HEAD, [cells])
    assert md.splitlines()[0].startswith(
        "| workload | members | clients | etcd 3.4 req/s | etcdstore req/s |"
    )
    assert all(c.conns == max(1, c.clients // 10) for c in compare.HEADLINE)


def test_delete_cell_uses_the_python_driver_only_when_named() -> None:
    """etcd's tool has no delete: the delete cell runs etcdstore's Python driver on both servers, only
    with --only, and says so in its row and in NOT_MEASURED."""
    assert all(not c.python_driver for c in compare.HEADLINE)
    assert "delete-m3-c100" not in {c.id for c in compare.select_cells("")}
    (cell,) = compare.select_cells("delete-m3-c100")
    assert (cell.python_driver, cell.members, cell.clients, cell.conns) == (True, 3, 100, 10)
    assert cell.workload == "delete (Python driver)" and cell.quick_total < cell.total
    assert cell.args(500) == ["delete", "--key-size=8", f"--val-size={compare.VAL_SIZE}", "--total=500"]
    assert [c.id for c in compare.select_cells("put-m1-c100, delete-m3-c100")] == [
        "put-m1-c100",
        "delete-m3-c100",
    ]
    with pytest.raises(SystemExit, match="unknown cell"):
        compare.select_cells("delete")
    assert any("Python driver" in n and "delete-m3-c100" in n for n in compare.NOT_MEASURED)
    assert "Python driver" in compare.DRIVER_NOTE and "no delete workload" in compare.DRIVER_NOTE

    run = {
        "ops_per_s": 2500.0,
        "elapsed_s": 0.8,
        "latency_ms": {"p50": 3.0, "p99": 9.5},
        "errors": {"NOT_DELETED": 2, "UNAVAILABLE": 1},
        "client_cpu_cores": 0.7,
    }
    r = compare.driver_result(run)
    assert (r.rps, r.total_s, r.p50_ms, r.p99_ms, r.errors, r.client_cpu) == (2500.0, 0.8, 3.0, 9.5, 3, 0.7)
    assert r.error_kinds == ["NOT_DELETED: 2", "UNAVAILABLE: 1"]
    ms = [
        compare.Measurement(cell.id, s, 1, rps, 3.0, 9.5, 0, 2000, 0.8)
        for s, rps in (("etcd", 2000.0), ("etcdstore", 2500.0))
    ]
    (row,) = compare.summarize([cell], ms)
    assert compare._cells(row)[:6] == ["delete (Python driver)", "3", "100", "2,000", "2,500", "1.25"]


def _tool_or_skip() -> str:
    if not os.access("/usr/bin/etcd", os.X_OK) and not os.access(os.environ.get("ETCD_BIN", ""), os.X_OK):
        pytest.skip("needs the real etcd 3.4 binary (apt-get install etcd-server)")
    try:
        return compare.find_tool()
    except SystemExit as e:
        pytest.skip(f"etcd's benchmark tool is not available: {e}")


def _members_of(work: Path) -> list[int]:
    """Pids of processes whose command line mentions `work` (the members' data dirs are under it)."""
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit() and int(d) != os.getpid():
            try:
                cmd = Path(f"/proc/{d}/cmdline").read_bytes()
            except OSError:
                continue
            if str(work).encode() in cmd and b"--data-dir" in cmd:
                pids.append(int(d))
    return pids


def test_quick_compare_prints_both_columns(tmp_path: Path) -> None:
    tool = _tool_or_skip()
    work = tmp_path / "work"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "etcdstore",
            "bench",
            "compare",
            "--quick",
            "--only",
            "put-m1-c100",
            "--benchmark-bin",
            tool,
            "--work-dir",
            str(work),
            "--json",
            str(tmp_path / "r.json"),
            "--markdown",
            str(tmp_path / "r.md"),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    head = next(line for line in out.stdout.splitlines() if line.startswith("workload"))
    assert "etcd 3.4 req/s" in head and "etcdstore req/s" in head and "etcdstore/etcd" in head
    row = next(line for line in out.stdout.splitlines() if line.startswith("put "))
    assert len(row.split()) >= 8, row
    assert "load average" in out.stdout
    doc = json.loads((tmp_path / "r.json").read_text())
    (summary,) = doc["summary"]
    assert summary["etcd"]["rps_median"] > 0 and summary["etcdstore"]["rps_median"] > 0
    assert {m["server"] for m in doc["measurements"]} == {"etcd", "etcdstore"}
    md = (tmp_path / "r.md").read_text()
    assert md.startswith("| workload |") and "| put | 1 | 100 |" in md
    assert _members_of(work) == []


class _Output:
    """The lines a process prints, read by a thread, so that every wait on them has a deadline."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        self.eof = False
        self._cond = threading.Condition()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self.eof = True
            self._cond.notify_all()

    @property
    def text(self) -> str:
        with self._cond:
            return "".join(self.lines)

    def wait_for(self, text: str, timeout: float) -> bool:
        """Whether a line containing `text` came within `timeout` s (False at once on end of file)."""
        with self._cond:
            self._cond.wait_for(lambda: self.eof or any(text in x for x in self.lines), timeout)
            return any(text in x for x in self.lines)

    def wait_eof(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.eof, timeout)


def _process_report(p: subprocess.Popen, work: Path, out: _Output) -> str:
    """What holds a run up: `p`'s signal dispositions, the processes under it or mentioning `work` (members,
    the Go tool), which ones hold the write end of its output pipe, then `p`'s own Python stacks
    (faulthandler on SIGABRT) and its output."""
    lines = []
    try:
        status = Path(f"/proc/{p.pid}/status").read_text().splitlines()
        lines += [f"compare (pid {p.pid}): " + " ".join(x for x in status if x.startswith(("State", "Sig")))]
    except OSError:
        lines.append(f"compare (pid {p.pid}) exited {p.poll()}")
    ps = subprocess.run(
        ["ps", "-ww", "-eo", "pid,ppid,pgid,sid,stat,etime,args"],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout.splitlines()
    parent = {int(x.split()[0]): int(x.split()[1]) for x in ps[1:]}

    def under(pid: int) -> bool:
        while pid > 1:
            if pid == p.pid:
                return True
            pid = parent.get(pid, 0)
        return False

    lines += ps[:1] + [x[:240] for x in ps[1:] if under(int(x.split()[0])) or str(work) in x]
    assert p.stdout is not None
    pipe = f"pipe:[{os.fstat(p.stdout.fileno()).st_ino}]"
    holders = []
    for d in filter(str.isdigit, os.listdir("/proc")):
        if int(d) == os.getpid():
            continue
        try:
            if any(os.readlink(f"/proc/{d}/fd/{fd}") == pipe for fd in os.listdir(f"/proc/{d}/fd")):
                cmdline = Path(f"/proc/{d}/cmdline").read_bytes().replace(b"\0", b" ")
                holders.append(f"{d} {cmdline[:200]!r}")
        except OSError:
            continue
    lines.append(f"holding its output pipe open: {holders or 'none'}")
    if p.poll() is None:
        p.send_signal(signal.SIGABRT)  # -X faulthandler: every thread's stack to its stderr (the pipe)
        out.wait_eof(10)
    lines.append("its output:\n" + out.text[-6000:])
    return "\n".join(lines)


@pytest.mark.parametrize("sigint", ["inherited", "ignored"])
def test_interrupted_compare_stops_every_member(tmp_path: Path, sigint: str) -> None:
    """SIGINT once the first cluster serves: compare stops everything it started and exits 130. `ignored`
    starts it as a shell starts a background job (`cmd &`: SIGINT ignored, kept across exec; Python then
    leaves it ignored unless the program installs a handler), the way a full test run started in the
    background ran it: compare took no notice and the test waited for it until its timeout."""
    tool = _tool_or_skip()
    work = tmp_path / "work"
    cmd = [
        sys.executable,
        "-X",
        "faulthandler",
        "-m",
        "etcdstore",
        "bench",
        "compare",
        "--rounds",
        "1",
        "--only",
        "put-m3-c1",
        "--total-scale",
        "100",
        "--benchmark-bin",
        tool,
        "--work-dir",
        str(work),
    ]
    if sigint == "ignored":
        cmd = ["sh", "-c", 'trap "" INT; exec "$@"', "sh", *cmd]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert p.stdout is not None
        out = _Output(p.stdout)
        # The first cluster serves (its members are running); compare gives up on a cluster after 90 s.
        if not out.wait_for("serving after", 120):
            pytest.fail("no cluster serving within 120 s:\n" + _process_report(p, work, out))
        assert len(_members_of(work)) == 3
        p.send_signal(signal.SIGINT)
        # A few seconds (the members' graceful stop); its every wait is bounded to well under this.
        if not out.wait_eof(120):
            pytest.fail("compare's output still open 120 s after SIGINT:\n" + _process_report(p, work, out))
        assert p.wait(30) == 130, out.text
        assert "interrupted" in out.text
        # Reaped before exit; the wait only guards against /proc lagging behind.
        eventually(lambda: _members_of(work) == [], 30, message="the members gone")
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_scale_rows_of_the_new_parts_have_both_columns() -> None:
    recs = [
        {
            "server": "etcd",
            "hows": ["move", "kill"],
            "kill_all_ok_s": 2.0,
            "kill_revoked": 0,
            "leases_left": 10,
        },
        {
            "server": "etcdstore",
            "hows": ["move", "kill"],
            "kill_all_ok_s": 1.0,
            "kill_revoked": 0,
            "leases_left": 10,
        },
    ]
    rows = {r[0]: r[1:] for r in compare.scale_rows("leader-change", recs)}
    assert rows["leader killed (SIGKILL): every lease renewed after, s"] == ["2.00", "1.00", "0.50"]
    assert rows["leader killed (SIGKILL): leases answered TTL 0 (revoked)"] == ["0", "0", "-"]
    assert rows["leader moved (MoveLeader): new leader after, s"] == ["-", "-", "-"]
    slow = compare.scale_rows(
        "slow-watcher", [{"server": "etcd", "with_p99_ms": 4.0}, {"server": "etcdstore"}]
    )
    assert ["others' put to event p99, ms: with slow watchers", "4.00", "-", "-"] in slow


def test_stalled_watch_frames() -> None:
    from etcdstore.bench import scale_clients as sc

    assert (
        sc._hpack_int(10) == b"\x0a"
        and sc._hpack_int(127) == b"\x7f\x00"
        and sc._hpack_int(300) == b"\x7f\xad\x01"
    )
    buf = bytearray(sc._frame(4, 0, 0, b"x" * 6) + sc._frame(0, 1, 1, b"ab") + b"\x00\x00")
    assert sc._frames(buf) == [(4, 0, 0, b"xxxxxx"), (0, 1, 1, b"ab")] and buf == b"\x00\x00"


def test_quick_scale_new_parts_print_both_columns(tmp_path: Path) -> None:
    """The slow-watcher and leader-change parts at --quick sizes (about 50 s on a loaded 2-core machine): both servers' columns, no
    part failed, nothing left running. proxy-watchers is left out to stay under a minute."""
    tool = _tool_or_skip()
    work = tmp_path / "work"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "etcdstore",
            "bench",
            "compare",
            "--suite",
            "scale",
            "--quick",
            "--scale-parts",
            "slow-watcher,leader-change",
            "--benchmark-bin",
            tool,
            "--work-dir",
            str(work),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "failed on" not in out.stdout and " failed: " not in out.stdout, out.stdout[-3000:]
    heads = [line for line in out.stdout.splitlines() if line.startswith("measure ")]
    assert len(heads) == 2 and all("etcd 3.4" in h and "etcdstore" in h for h in heads), heads
    assert "slow connections the server kept open" in out.stdout and "leases left at the end" in out.stdout
    assert _members_of(work) == []
