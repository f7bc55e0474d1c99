"""docs/architecture.md names every module of the package, and every file it names exists."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "mlpot"
PAGE = (ROOT / "docs" / "architecture.md").read_text()


def test_every_module_is_on_the_page():
    """Every module (subpackages' __init__.py aside) is named, as `path/module.py`."""
    modules = sorted(str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py")
                     if path.name != "__init__.py" or path.parent == PACKAGE)
    missing = [module for module in modules if f"`{module}`" not in PAGE]
    assert not missing, f"docs/architecture.md does not name {missing}"


def test_every_named_file_exists():
    named = set(re.findall(r"`((?:[a-z_]+/)*[a-z_]+\.(?:py|sh|md|h|cpp))`", PAGE))
    assert len(named) > 60
    gone = [name for name in named if not any((base / name).exists() for base in (
        PACKAGE, ROOT, ROOT / "lammps", ROOT / "scripts"))]
    assert not gone, f"docs/architecture.md names files that do not exist: {gone}"
