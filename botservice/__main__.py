import sys

from botservice.cli import main

sys.exit(main())
