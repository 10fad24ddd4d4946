"""dvc.yaml <-> code: every stage runs a script of ours that exists, depends on it, on every
module of ours it imports (transitively) and on the params section it reads, and every stage
script is wired into the DAG."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from msjoe.code_identity import imported_names, module_closure, module_file

ROOT = Path(__file__).resolve().parents[2]
DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
#: The benchmark pipeline runs the same stage scripts from the repository root (wdir: ..).
BENCHMARK = yaml.safe_load((ROOT / "benchmark_eval" / "dvc.yaml").read_text())["stages"]
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())


def _script(cmd: str) -> str:
    match = re.match(r"python (?:-m torch\.distributed\.run .*? )?(stages/\w+\.py)", cmd)
    assert match, f"stage command must run a stage script: {cmd}"
    return match.group(1)


def test_every_stage_runs_an_existing_script_it_depends_on() -> None:
    for name, stage in DVC.items():
        script = _script(stage["cmd"])
        assert (ROOT / script).is_file(), f"{name}: {script} missing"
        assert script in stage["deps"], f"{name}: does not depend on its own script"
        for dep in stage["deps"]:
            assert (ROOT / dep).exists() or any(
                dep == out or dep.startswith(f"{out}/") for other in DVC.values() for out in _outs(other)
            ), f"{name}: dependency {dep} is neither in the repo nor produced by a stage"


SRC = ROOT / "src"


def _code_closure(script: str) -> set[str]:
    """Repository files a stage script runs: itself, the ``stages/`` modules it imports, and
    every ``msjoe`` module reachable through imports (``msjoe.code_identity.module_closure``,
    the walk that also names a training run's code)."""
    stage_files: set[Path] = set()
    modules: set[str] = set()
    todo = [ROOT / script]
    while todo:
        path = todo.pop()
        if path in stage_files:
            continue
        stage_files.add(path)
        for name in imported_names(path, SRC):
            parts = name.split(".")
            local = parts[1] if parts[0] == "stages" and len(parts) > 1 else parts[0]
            if (ROOT / "stages" / f"{local}.py").is_file():  # a stage's own helpers (_common, _rl)
                todo.append(ROOT / "stages" / f"{local}.py")
            elif parts[0] == "msjoe":
                modules |= {m for i in range(1, len(parts) + 1) if module_file(m := ".".join(parts[:i]), SRC)}
    files = stage_files | {f for m in modules for f in module_closure(m, SRC)}
    return {str(p.relative_to(ROOT)) for p in files}


def _uncovered(files: set[str], deps: list[str]) -> list[str]:
    return sorted(f for f in files if not any(f == d or f.startswith(d.rstrip("/") + "/") for d in deps))


def test_deps_cover_every_module_a_stage_imports() -> None:
    """An edit to any code a stage runs must make DVC rerun it (no stale results)."""
    for name, stage in [*DVC.items(), *((f"benchmark_eval:{n}", s) for n, s in BENCHMARK.items())]:
        files = _code_closure(_script(stage["cmd"]))
        assert "src/msjoe/__init__.py" in files, f"{name}: the import walk found no msjoe module"
        assert not _uncovered(files, stage["deps"]), f"{name}: deps miss {_uncovered(files, stage['deps'])}"


def test_benchmark_stages_run_the_demo_scripts_from_the_root_with_their_own_params() -> None:
    for name, stage in BENCHMARK.items():
        assert stage["wdir"] == "..", f"benchmark_eval:{name} must run in the repository root"
        assert f"stages/{name}.py" in stage["deps"] and "--params benchmark_eval/params.yaml" in stage["cmd"]
        (declared,) = [entry["benchmark_eval/params.yaml"] for entry in stage["params"]]
        assert {p.split(".")[0] for p in declared} <= yaml.safe_load((ROOT / "benchmark_eval" / "params.yaml").read_text()).keys()


def test_package_deps_cover_every_file_the_bento_packs() -> None:
    """The bento's tag hashes what it packs (msjoe.package.bento_tag_for): a packed file
    that is not a dependency would change the tag without DVC rerunning package."""
    spec = yaml.safe_load((ROOT / "bento" / "bentofile.yaml").read_text())
    packed = {str(p.relative_to(ROOT)) for pattern in spec["include"] for p in ROOT.glob(pattern) if p.is_file()}
    packed |= {"bento/bentofile.yaml", spec["python"]["requirements_txt"]}
    assert "src/msjoe/evaluate.py" in packed
    assert not _uncovered(packed, DVC["package"]["deps"]), _uncovered(packed, DVC["package"]["deps"])


def test_dependency_check_notices_a_missing_module() -> None:
    files = _code_closure(_script(DVC["evaluate"]["cmd"]))
    assert {"src/msjoe/stats.py", "src/msjoe/mllm/parsing.py", "stages/_common.py"} <= files
    deps = [d for d in DVC["evaluate"]["deps"] if d != "src/msjoe/mllm"]
    assert "src/msjoe/mllm/parsing.py" in _uncovered(files, deps)


def test_stage_params_match_the_sections_the_scripts_read() -> None:
    for name, stage in DVC.items():
        source = (ROOT / _script(stage["cmd"])).read_text()
        read = set(re.findall(r'(?:params|_rl\.start)\("(\w+)"', source))  # _rl.start reads the stage's own section
        # _common.pipeline_settings (which _rl.load_inputs calls): embed's frames + the inference section
        if "pipeline_settings(" in source or "_rl.load_inputs(" in source:
            read |= {"embed", "inference"}
        declared = {p.split(".")[0] for p in stage.get("params", [])}
        assert read == declared, f"{name}: reads {read} but declares {declared}"
        assert declared <= PARAMS.keys(), f"{name}: params section missing from params.yaml"


def test_every_stage_script_is_in_the_dag() -> None:
    wired = {_script(stage["cmd"]) for stage in DVC.values()}
    scripts = {f"stages/{p.name}" for p in (ROOT / "stages").glob("*.py") if not p.name.startswith("_")}
    assert scripts == wired


#: Metrics DVC caches instead of git: each stands for state outside the workspace, so a fresh
#: clone must run its stage (package: the bento in this machine's BentoML store).
CACHED_METRICS = {"reports/package.json"}


def test_metrics_are_not_cached_and_outputs_are_not_in_git() -> None:
    import subprocess

    for name, stage in DVC.items():
        for metric in stage.get("metrics", []):
            (path, opts), = metric.items() if isinstance(metric, dict) else [(metric, {"cache": True})]
            assert (opts.get("cache", True) is not False) == (path in CACHED_METRICS), (
                f"{name}: metric {path} must be cache: false (committed, so `dvc metrics diff` compares commits)")
            if path in CACHED_METRICS:
                tracked = subprocess.run(["git", "ls-files", path], cwd=ROOT, capture_output=True, text=True).stdout
                assert not tracked, f"{name}: cached metric {path} is committed to git"
        for out in _outs(stage, metrics=False):
            tracked = subprocess.run(["git", "ls-files", out], cwd=ROOT, capture_output=True, text=True).stdout
            assert not tracked, f"{name}: DVC output {out} is committed to git"


def _outs(stage: dict, metrics: bool = True) -> list[str]:
    kinds = ("outs", "metrics", "plots") if metrics else ("outs",)
    return [o if isinstance(o, str) else next(iter(o)) for kind in kinds for o in stage.get(kind, [])]
