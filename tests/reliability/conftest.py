"""Fixtures of the reliability tests (the code lives in ``rel_helpers.py``).

``small_pair`` (session), ``reference_run`` (session), ``s3_pair`` (module) and
``fault_proxy``;
see :mod:`rel_helpers`. Test modules import the helpers with
``from rel_helpers import ...`` (this directory is put on ``sys.path`` here).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from rel_helpers import fault_proxy, reference_run, s3_pair, small_pair

__all__ = ["fault_proxy", "reference_run", "s3_pair", "small_pair"]
