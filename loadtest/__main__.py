import sys

from loadtest import loadtest_main

sys.exit(loadtest_main())
