#!/usr/bin/env python
"""Run one LLM-Core closed loop in a terminal: ``python run.py --module mdp --toy``.

Same as the ``llmcore`` console script; ``python run.py --list`` lists the modules.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))  # works without installing too

from llmcore.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
