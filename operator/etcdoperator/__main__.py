import sys

from etcdoperator.cli import main

sys.exit(main())
