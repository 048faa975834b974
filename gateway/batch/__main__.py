import sys

from gateway.batch.cli import batch_main

sys.exit(batch_main())
