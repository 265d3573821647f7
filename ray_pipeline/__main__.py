"""``python -m ray_pipeline`` is the same CLI as ``ray-pipeline``."""

import sys

from ray_pipeline.cli import main

sys.exit(main())
