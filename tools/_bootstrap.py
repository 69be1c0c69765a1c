"""Makes the repository's packages importable from a script run as a file.

``python tools/evaluate.py`` puts ``tools/``, not the repository root, first on ``sys.path``, so
``import predictor`` would fail. Every script outside the root (``tools/*.py``,
``pretrained/*.py``) runs this file first, by path::

    runpy.run_path(str(Path(__file__).resolve().parents[1] / "tools" / "_bootstrap.py"))

It is the one place that edits ``sys.path``; after ``pip install -e .`` it changes nothing.
"""

import sys
from pathlib import Path

REPO_ROOT = str(Path(__file__).resolve().parents[1])
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)
