import sys

from etcdstore.bench.cli import main

raise SystemExit(main(sys.argv[1:]))
