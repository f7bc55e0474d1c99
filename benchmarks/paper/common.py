"""benchmarks/common.py for the scripts of this folder.

``python benchmarks/paper/NAME.py`` puts this folder on ``sys.path``, not benchmarks/, so
``import common`` finds this file, which loads ../common.py and stands it in its own place:
the scripts here import the one shared module by the same name as those in benchmarks/.
"""
import importlib.util
import sys
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    __name__, Path(__file__).resolve().parents[1] / "common.py")
_module = importlib.util.module_from_spec(_spec)
sys.modules[__name__] = _module  # `import common` now returns benchmarks/common.py's module
_spec.loader.exec_module(_module)
