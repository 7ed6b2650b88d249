"""environment.yml (conda) installs the same packages as pyproject.toml, with torch pinned."""

import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pyproject_requirements() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return set(project["dependencies"]) | set(project["optional-dependencies"]["dev"])


def _conda_pip_requirements() -> set[str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_sections = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip_sections) == 1, "environment.yml needs exactly one pip: section"
    return {r for r in pip_sections[0] if not r.startswith("-e")}


def test_environment_yml_matches_pyproject():
    assert _conda_pip_requirements() == _pyproject_requirements()


def test_torch_and_torchvision_are_pinned_exactly():
    pins = {r.split("==")[0]: r for r in _pyproject_requirements() if "==" in r}
    assert "torch" in pins and "torchvision" in pins, "pin torch and torchvision with =="


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and "make test" in ci
    assert "make reports" in readme


def test_jupyterlab_is_a_dependency():
    assert any(r.startswith("jupyterlab") for r in _pyproject_requirements())
    assert any(r.startswith("jupyterlab") for r in _conda_pip_requirements())


def test_make_test_is_the_full_suite_and_test_quick_skips_slow():
    makefile = (ROOT / "Makefile").read_text()
    test_recipe = makefile.split("\ntest: env\n", 1)[1].split("\n\n", 1)[0]
    quick_recipe = makefile.split("\ntest-quick: env\n", 1)[1].split("\n\n", 1)[0]
    assert "pytest" in test_recipe and "not slow" not in test_recipe
    assert '-m "not slow"' in quick_recipe
    assert "make test-quick" in (ROOT / "README.md").read_text()


def test_default_data_root_is_inside_the_repo():
    makefile = (ROOT / "Makefile").read_text()
    default = next(line for line in makefile.splitlines() if line.startswith("DATA_ROOT ?="))
    assert "DENSENET_DATA" in default and "../" not in default and default.rstrip().endswith(",data)")
    for nb in ("01_architecture.ipynb", "06_performance.ipynb"):
        assert 'data_root = "data"' in "".join(
            __import__("json").loads((ROOT / "notebooks" / nb).read_text())["cells"][1]["source"])


def test_readme_layout_names_every_module_and_nothing_else():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Layout", 1)[1].split("```", 2)[1]
    listed = {line.split()[0] for line in block.splitlines() if line.startswith("  ") and line.split()[0].endswith(".py")}
    package = ROOT / "densenet_repro"
    modules = {p.relative_to(package).as_posix() for p in package.rglob("*.py")
               if p.name not in ("__init__.py", "__main__.py")}
    assert listed == modules, f"README layout: missing {sorted(modules - listed)}, stale {sorted(listed - modules)}"
