"""msjoe.code_identity: a resumable run's code identity covers exactly what its module imports."""

from __future__ import annotations

from pathlib import Path

import pytest

from msjoe.code_identity import code_identity, module_closure


def _package(root: Path) -> Path:
    pkg = root / "msjoe"
    (pkg / "rl").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "rl" / "__init__.py").write_text("")
    (pkg / "rl" / "trainer.py").write_text(
        "from msjoe.optim import adamw\nfrom . import steps\n\ndef run():\n    from msjoe.lazy import helper\n"
    )
    (pkg / "rl" / "steps.py").write_text("X = 1\n")
    (pkg / "optim.py").write_text("def adamw(): ...\n")
    (pkg / "lazy.py").write_text("def helper(): ...\n")
    (pkg / "serving.py").write_text("import msjoe.optim\n")  # imports, but is not imported
    return pkg


def test_the_closure_follows_top_level_relative_and_lazy_imports(tmp_path: Path) -> None:
    pkg = _package(tmp_path)
    names = {p.relative_to(pkg).as_posix() for p in module_closure("msjoe.rl.trainer", tmp_path)}
    assert names == {"__init__.py", "rl/__init__.py", "rl/trainer.py", "rl/steps.py", "optim.py", "lazy.py"}


@pytest.mark.parametrize("edited", ["optim.py", "lazy.py", "rl/steps.py", "rl/trainer.py"])
def test_an_edit_to_code_the_trainer_runs_changes_its_identity(tmp_path: Path, edited: str) -> None:
    pkg = _package(tmp_path)
    before = code_identity("msjoe.rl.trainer", tmp_path)
    assert code_identity("msjoe.rl.trainer", tmp_path) == before  # stable
    path = pkg / edited
    path.write_text(path.read_text() + "# changed\n")
    assert code_identity("msjoe.rl.trainer", tmp_path) != before


def test_an_edit_elsewhere_leaves_it(tmp_path: Path) -> None:
    pkg = _package(tmp_path)
    before = code_identity("msjoe.rl.trainer", tmp_path)
    (pkg / "serving.py").write_text("import msjoe.optim  # changed\n")
    assert code_identity("msjoe.rl.trainer", tmp_path) == before


def test_an_unknown_module_is_an_error(tmp_path: Path) -> None:
    _package(tmp_path)
    with pytest.raises(ValueError, match="msjoe.nowhere"):
        code_identity("msjoe.nowhere", tmp_path)
