import sys

from etcdstore.cli import main

sys.exit(main())
