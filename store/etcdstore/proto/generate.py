"""Regenerate the Python protobuf and gRPC modules from the .proto files.

    python -m etcdstore.proto.generate            # rewrite the generated modules in place
    python -m etcdstore.proto.generate --check    # exit 1 if the committed modules are stale

The .proto files import each other by their path under `store/` (for example
"etcdstore/proto/mvccpb/kv.proto") so the generated modules import each other as
`etcdstore.proto.mvccpb.kv_pb2`; the proto *package* names (mvccpb, etcdserverpb, ...)
stay etcd's, which is all the wire format and gRPC method paths depend on.
"""

from __future__ import annotations

import argparse
import filecmp
import pathlib
import shutil
import sys
import tempfile

PROTO_DIR = pathlib.Path(__file__).resolve().parent
STORE_ROOT = PROTO_DIR.parent.parent  # the directory that holds the `etcdstore` package
# Files with services also get a *_pb2_grpc.py module.
PROTOS = [
    "mvccpb/kv.proto",
    "authpb/auth.proto",
    "etcdserverpb/rpc.proto",
    "v3lockpb/v3lock.proto",
    "v3electionpb/v3election.proto",
]
WITH_SERVICES = {"etcdserverpb/rpc.proto", "v3lockpb/v3lock.proto", "v3electionpb/v3election.proto"}


def generated_names(proto: str) -> list[str]:
    stem = proto[: -len(".proto")]
    names = [f"{stem}_pb2.py", f"{stem}_pb2.pyi"]
    if proto in WITH_SERVICES:
        names.append(f"{stem}_pb2_grpc.py")
    return names


def generate(out_root: pathlib.Path) -> None:
    """Run protoc for every .proto, writing `etcdstore/proto/...` under out_root."""
    from grpc_tools import protoc  # build-time dependency only

    import grpc_tools

    include = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    for proto in PROTOS:
        rel = f"etcdstore/proto/{proto}"
        args = [
            "protoc",
            f"-I{STORE_ROOT}",
            f"-I{include}",
            f"--python_out={out_root}",
            f"--pyi_out={out_root}",
        ]
        if proto in WITH_SERVICES:
            args.append(f"--grpc_python_out={out_root}")
        args.append(rel)
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed for {rel}")


def stale_files() -> list[str]:
    """Names of generated modules that differ from what protoc produces now."""
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp)
        generate(out)
        stale = []
        for proto in PROTOS:
            for name in generated_names(proto):
                fresh = out / "etcdstore" / "proto" / name
                committed = PROTO_DIR / name
                if not committed.exists() or not filecmp.cmp(fresh, committed, shallow=False):
                    stale.append(name)
        return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only report stale modules")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        for name in stale:
            print(f"stale: {name}", file=sys.stderr)
        return 1 if stale else 0
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp)
        generate(out)
        for proto in PROTOS:
            for name in generated_names(proto):
                shutil.copyfile(out / "etcdstore" / "proto" / name, PROTO_DIR / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
