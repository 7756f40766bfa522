import sys

from profilers.cli import main

sys.exit(main())
