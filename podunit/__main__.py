import sys

from podunit.cli import main

sys.exit(main())
