import sys

from fusionc.cli import main

sys.exit(main())
