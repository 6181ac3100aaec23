import sys

from loracle.cli import main

sys.exit(main())
