import sys

from .random_demo import main

sys.exit(main())
