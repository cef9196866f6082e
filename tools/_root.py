"""Puts the repository's root on sys.path, for the tools beside this file: run as `python tools/<tool>.py`
from the root, Python looks for imports in tools/ first, not in the root where core.py, the experiment
scripts and runner/ are. Each tool imports this module before any other module of the repository."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
