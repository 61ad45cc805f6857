import sys

from iclf.cli import main

sys.exit(main())
