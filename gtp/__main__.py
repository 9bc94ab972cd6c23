"""`python -m gtp ...`: see gtp/cli.py."""
import sys

from .cli import main

sys.exit(main())
