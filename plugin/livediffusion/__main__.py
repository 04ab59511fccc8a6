from __future__ import annotations

import sys

from livediffusion.cli import main

sys.exit(main())
