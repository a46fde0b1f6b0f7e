"""Where the Flower app's files are: the source checkout, or the copy an installed wheel carries.

`flwr run` needs a folder with the app's `pyproject.toml` and its packages. A checkout is such a
folder; `pip install .` puts the packages in site-packages and `pyproject.toml` and `configs/` in
`fed_a2v/app_files/` (see `[tool.setuptools.package-dir]`), from which one is assembled.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

APP_TABLE = "[tool.flwr.app]"
APP_PACKAGES = ("fed_a2v", "server", "client")
_SKIP = shutil.ignore_patterns("__pycache__", "app_files")
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # fed_a2v/


def checkout_root() -> Path | None:
    """The source checkout this package runs from, if it does (editable install, tests)."""
    root = Path(__file__).resolve().parents[2]  # fed_a2v/launch/app_dir.py
    pyproject = root / "pyproject.toml"
    if pyproject.is_file() and APP_TABLE in pyproject.read_text(errors="replace"):
        return root
    return None


def app_files() -> Path:
    """The folder holding the app's `pyproject.toml` and `configs/`."""
    return checkout_root() or PACKAGE_DIR / "app_files"


def default_config() -> Path:
    return app_files() / "configs" / "quickstart.json"


@contextmanager
def flower_app_dir() -> Iterator[Path]:
    """A folder `flwr run` accepts: the checkout, or a temporary copy of the installed app."""
    root = checkout_root()
    if root is not None:
        yield root
        return
    files = app_files()
    with tempfile.TemporaryDirectory(prefix="feda2v-app-") as tmp:
        app = Path(tmp)
        shutil.copy2(files / "pyproject.toml", app / "pyproject.toml")
        shutil.copytree(files / "configs", app / "configs", ignore=_SKIP)
        for package in APP_PACKAGES:
            spec = importlib.util.find_spec(package)
            if spec is None or spec.origin is None:
                raise RuntimeError(f"the installed FedA2V lacks its '{package}' package")
            shutil.copytree(Path(spec.origin).parent, app / package, ignore=_SKIP)
        yield app
