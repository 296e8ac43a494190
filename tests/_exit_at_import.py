"""A broken plugin for the hardening tests: importing it calls ``sys.exit(3)``."""

import sys

sys.exit(3)
