import sys

from sp4sc.cli import main

sys.exit(main())
