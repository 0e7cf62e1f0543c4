"""``python -m shared.cli``: how ``ner up`` starts its children, with or without the script on PATH."""

import sys

from shared.cli.main import main

sys.exit(main())
