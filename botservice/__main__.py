import sys

from botservice.app.cli import main

sys.exit(main())
