"""The layout docs/ARCHITECTURE.md describes is the tree's: every path it names exists, the top
level of ftexp holds only commands and packages, no module outgrows 500 lines, every package says
what lives in it, and every dotted path a config names (`_target_`, the task registry) imports."""

from __future__ import annotations

import ast
import re
from dataclasses import fields

import pytest
from omegaconf import OmegaConf

from ftexp.runs.paths import project_root

ROOT = project_root()
PACKAGE = ROOT / "src" / "ftexp"
ARCHITECTURE = ROOT / "docs" / "ARCHITECTURE.md"
# The commands users run (`python -m ftexp.<command>`, `python -m ftexp` for cli) — the only
# modules at the top level; everything else lives in a package.
COMMANDS = {"__init__", "__main__", "cli", "train", "predict", "generate", "export", "report", "evaluate",
            "serve"}
MAX_MODULE_LINES = 500


def test_the_top_level_holds_only_the_commands_and_packages():
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    assert modules == COMMANDS, f"move {sorted(modules - COMMANDS)} into a package (see docs/ARCHITECTURE.md)"
    packages = [p for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"]
    assert all((p / "__init__.py").is_file() for p in packages), packages


@pytest.mark.parametrize("package", sorted(p.name for p in PACKAGE.iterdir()
                                           if (p / "__init__.py").is_file()))
def test_every_package_says_what_lives_in_it(package: str):
    doc = ast.get_docstring(ast.parse((PACKAGE / package / "__init__.py").read_text()))
    assert doc and len(doc.split()) >= 15, f"ftexp/{package}/__init__.py needs a docstring: what lives there"


def test_no_module_outgrows_five_hundred_lines():
    sizes = {p.relative_to(ROOT).as_posix(): len(p.read_text().splitlines())
             for p in (ROOT / "src").rglob("*.py")}
    assert {p: n for p, n in sizes.items() if n > MAX_MODULE_LINES} == {}


def _named_paths(text: str) -> set[str]:
    """Paths the document names: `code` spans and **bold** names with a slash or a .py / .md / .yaml
    ending (placeholders such as `<name>` and globs left out)."""
    spans = re.findall(r"`([^`\s]+)`|\*\*`?([^*`\s]+)`?\*\*", text)
    found = {a or b for a, b in spans}
    return {p.rstrip(",.:;") for p in found
            if ("/" in p or re.search(r"\.(py|md|yaml)$", p)) and not re.search(r"[<>*{}$=]|://", p)
            and not p.startswith(("python", "+"))}


def _exists(path: str) -> bool:
    """A path as the document writes it: from the repository root, from src/ or src/ftexp/, or a
    bare file name of the package or folder named just before it (`tasks/` … `grpo.py`): then
    anywhere under src/ or benchmarks/."""
    bare = path.rstrip("/")
    return any(base.joinpath(bare).exists() for base in (ROOT, ROOT / "src", PACKAGE)) or (
        "/" not in bare and any(any(folder.rglob(bare)) for folder in (ROOT / "src", ROOT / "benchmarks")))


def test_every_path_architecture_names_exists():
    named = _named_paths(ARCHITECTURE.read_text())
    assert len(named) > 40  # the map names the tree, not a handful of files
    assert sorted(p for p in named if not _exists(p)) == []


def test_every_package_of_the_tree_is_on_the_map():
    text = ARCHITECTURE.read_text()
    packages = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())
    assert [p for p in packages if f"{p}/" not in text] == []


def _targets(node, where: str):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "_target_" and isinstance(value, str) and "${" not in value:
                yield where, value
            else:
                yield from _targets(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from _targets(item, f"{where}[{i}]")


def _config_targets() -> list[tuple[str, str]]:
    from ftexp.config.root import GROUP_SCHEMAS

    found = [(str(p.relative_to(ROOT)), target)
             for p in sorted([*(ROOT / "conf").rglob("*.yaml"), *(ROOT / "sweeps").rglob("*.yaml")])
             for _, target in _targets(OmegaConf.to_container(OmegaConf.load(p)), p.stem)]
    found += [(f"schema {group}", f.default) for group, schema in GROUP_SCHEMAS.items()
              for f in fields(schema) if f.name == "_target_"]
    return found


def test_every_target_a_config_names_imports():
    from ftexp.builders.targets import import_target

    targets = _config_targets()
    assert {t for _, t in targets} >= {"ftexp.tasks.rewards.exact_match", "torch.optim.AdamW",
                                       "ftexp.builders.loggers.wandb_logger"}
    for where, target in targets:
        assert callable(import_target(target, where)), (where, target)


def test_every_task_class_the_registry_names_imports():
    from ftexp.tasks.registry import TASKS

    for spec in TASKS.values():
        assert spec.task_class().__name__, spec.name


@pytest.mark.parametrize("module", sorted(p.stem for p in (PACKAGE / "config").glob("*.py")
                                          if p.stem not in ("rules", "validation", "upgrade", "store")))
def test_schema_modules_import_no_deep_learning_stack(module: str):
    """`--cfg job`, `--help` and the preflight checks read the schemas before a job starts: their
    modules import the standard library, OmegaConf and ftexp's own light modules only."""
    from conftest import top_level_imports

    imported = top_level_imports(str(PACKAGE / "config" / f"{module}.py"))
    assert imported <= {"__future__", "collections", "dataclasses", "pathlib", "typing", "omegaconf", "ftexp"}
    source = (PACKAGE / "config" / f"{module}.py").read_text()
    assert set(re.findall(r"^from (ftexp\.[\w.]+) import", source, re.M)) <= {
        *(f"ftexp.config.{p.stem}" for p in (PACKAGE / "config").glob("*.py")), "ftexp.runs.errors"}
