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
from pathlib import Path

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


def test_interrupted_compare_stops_every_member(tmp_path: Path) -> None:
    tool = _tool_or_skip()
    work = tmp_path / "work"
    p = subprocess.Popen(
        [
            sys.executable,
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
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert p.stdout is not None
        seen = []
        for line in p.stdout:  # wait until the first cluster serves: its members are running
            seen.append(line)
            if "serving after" in line:
                break
        assert any("serving after" in x for x in seen), "".join(seen)
        assert len(_members_of(work)) == 3
        p.send_signal(signal.SIGINT)
        rest = p.stdout.read()
        assert p.wait(60) == 130, rest
        assert "interrupted" in rest
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
