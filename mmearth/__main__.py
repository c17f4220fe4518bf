"""python -m mmearth: the same as the mmearth command."""

import sys

from mmearth.cli import main

sys.exit(main())
