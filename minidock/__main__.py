"""`python3 -m minidock` starts the daemon."""
import sys

from minidock.daemon import main

sys.exit(main())
