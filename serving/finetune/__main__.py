import sys

from serving.finetune.cli import main

sys.exit(main())
