"""An app that fails while being imported (exit code 3)."""

raise RuntimeError("broken at import time")
