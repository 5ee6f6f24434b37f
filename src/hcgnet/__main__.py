import sys

from hcgnet.cli import main

sys.exit(main())
