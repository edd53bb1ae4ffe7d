import sys

from s2s2_monai.cli import main

sys.exit(main())
