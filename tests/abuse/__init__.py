"""The HTTP/2 abuse suite: attacks on a member's client port, side by side with real etcd 3.4.

`python -m tests.abuse --help` (or tests/run-abuse) for the long form; test_abuse_smoke.py is
the short form in the default test run. docs/h2-abuse.md describes the attacks and results.
"""
