"""`etcdstore --help`: every member flag described (etcd's groups and wording), the subcommands listed,
and docs/configuration.md in step with the flag table and the environment variables the store reads."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from etcdstore import config

REPO = Path(__file__).resolve().parents[2]
SUBCOMMANDS = (
    "snapshot restore",
    "snapshot status",
    "grpc-proxy start",
    "local-cluster",
    "bench",
    "--version",
)


def help_text() -> str:
    out = subprocess.run(
        [sys.executable, "-m", "etcdstore", "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def parser_flags() -> set[str]:
    return {
        s[2:]
        for a in config._build_parser()._actions
        for s in a.option_strings
        if s.startswith("--") and s not in ("--help", "--version")
    }


def test_every_flag_has_a_description_and_a_group():
    flags = parser_flags()
    assert flags == set(config.FLAG_HELP)
    for a in config._build_parser()._actions:
        if a.option_strings and a.option_strings[0] not in ("-h", "--help"):
            assert a.help and len(a.help) > 10, a.option_strings
    for name, (group, _default, text) in config.FLAG_HELP.items():
        assert group in config.GROUPS, name
        assert text.endswith(".") and len(text) > 15, name


def test_help_lists_subcommands_and_every_flag_by_group():
    text = help_text()
    for sub in SUBCOMMANDS:
        assert f"etcdstore {sub}" in text, sub
    listed = re.findall(r"^  --([a-z0-9-]+) '", text, flags=re.MULTILINE)
    assert sorted(listed) == sorted(config.FLAG_HELP)
    # Groups in etcd's order, each flag under its own group.
    positions = [text.index(f"\n{g}:\n") for g in config.GROUPS]
    assert positions == sorted(positions)
    for name, (group, _, desc) in config.FLAG_HELP.items():
        at = text.index(f"\n  --{name} '")
        before = [g for g, p in zip(config.GROUPS, positions, strict=True) if p < at]
        assert before[-1] == group, name
        assert " ".join(desc.split()[:6]) in " ".join(text[at : at + 400].split()), name


def test_help_uses_etcds_words_for_shared_flags():
    """The flags etcd 3.4 has are described with its `etcd --help` sentences (a sample, checked literally)."""
    text = " ".join(help_text().split())
    for sentence in (
        "Human-readable name for this member.",
        "Discovery URL used to bootstrap the cluster.",
        "DNS srv domain used to bootstrap the cluster.",
        "Suffix to the dns srv name queried when bootstrapping.",
        "Reject reconfiguration requests that would cause quorum loss.",
        "Force to create a new one-member cluster.",
    ):
        assert sentence in text


def test_docs_configuration_matches_the_parser():
    doc = (REPO / "docs" / "configuration.md").read_text()
    begin, end = "<!-- generated: flags begin -->\n", "<!-- generated: flags end -->"
    generated = doc[doc.index(begin) + len(begin) : doc.index(end)]
    assert generated == config.flags_markdown(), (
        "docs/configuration.md is out of date: regenerate the part between the markers with "
        "`.venv/bin/python -c \"from etcdstore.config import flags_markdown; print(flags_markdown(), end='')\"`"
    )


def test_every_environment_variable_read_is_documented():
    """Names of environment variables the store reads (os.environ / environ.get with a literal) are in the table."""
    read: set[str] = set()
    pattern = re.compile(
        r"""environ(?:\.get)?\(\s*["']([A-Z][A-Z0-9_]+)["']|environ\[\s*["']([A-Z][A-Z0-9_]+)["']"""
    )
    for path in (REPO / "store" / "etcdstore").rglob("*.py"):
        if "proto" in path.parts:
            continue
        for m in pattern.finditer(path.read_text()):
            read.add(m.group(1) or m.group(2))
    assert read, "the scan found nothing: the pattern is broken"
    assert read <= set(config.ENVIRONMENT), read - set(config.ENVIRONMENT)
