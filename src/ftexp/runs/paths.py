"""Where the config tree and the shipped data sample live, for a checkout and for a wheel."""

from __future__ import annotations

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent.parent  # ftexp/ (this module lives in ftexp/runs/)


def project_root() -> Path:
    """The folder holding `conf/` and `data/`: the repo for an editable install, else the package."""
    if (_PACKAGE_DIR / "conf").is_dir():  # installed from a wheel (see pyproject force-include)
        return _PACKAGE_DIR
    return _PACKAGE_DIR.parent.parent


def config_dir() -> Path:
    return project_root() / "conf"


def data_dir() -> Path:
    root = project_root()
    return root / ("data_samples" if root == _PACKAGE_DIR else "data")


def resolve_model_path(name_or_path: str) -> str:
    """`package:<module>/<subdir>` → a directory inside an installed package; anything else as is.

    Lets a pip package carry pretrained weights (the embedded MiniLM) and be named in config
    without hard-coding a site-packages path.
    """
    if not name_or_path.startswith("package:"):
        return name_or_path
    module, _, subdir = name_or_path[len("package:"):].partition("/")
    import importlib.util

    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        from ftexp.runs.errors import ConfigError

        raise ConfigError(
            f"model '{name_or_path}' needs the Python package '{module}', which is not installed; "
            f"install it (pip install {module.replace('_', '-')}) or point model.name_or_path "
            "at a Hub id or local directory."
        )
    return str(Path(next(iter(spec.submodule_search_locations))) / subdir)
