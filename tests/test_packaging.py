"""`pip install .` from a clean checkout: the wheel holds the packages and the shipped model, and an install
works from any folder (the library imports, `python -m experiments.generate` runs the shipped model)."""

import os
import shutil
import subprocess
import sys
import venv
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ASSETS = os.path.join(ROOT, "d2cache_jax", "assets", "tiny_arith")
PACKAGES = ("d2cache_jax", "checkpoints_convert", "experiments")
SKIP = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".ruff_cache",
                              "runs", "out")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> str:
    """A wheel built from a copy of the checkout (so the build leaves nothing in the repository)."""
    tmp = tmp_path_factory.mktemp("pkg")
    src, out = tmp / "src", tmp / "wheels"
    shutil.copytree(ROOT, src, ignore=SKIP)
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(src),
                          "-w", str(out)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    (whl,) = [os.path.join(out, f) for f in os.listdir(out) if f.endswith(".whl")]
    return whl


def _source_files(package: str) -> set[str]:
    root = os.path.join(ROOT, package)
    return {os.path.relpath(os.path.join(d, f), ROOT).replace(os.sep, "/")
            for d, _, files in os.walk(root) if "__pycache__" not in d for f in files if f.endswith(".py")}


def test_wheel_holds_packages_and_model(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for package in PACKAGES:
        missing = _source_files(package) - names
        assert not missing, missing
    for f in os.listdir(ASSETS):
        assert f"d2cache_jax/assets/tiny_arith/{f}" in names
    assert "d2cache_jax/evaluation/tasks/fewshot/minerva_math.json" in names
    assert not any(n.startswith(("tests/", "docs/")) for n in names)
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "Requires-Dist: jax==" in meta  # dependencies come from requirements.txt


def test_installed_runs_from_another_folder(wheel, tmp_path):
    """Installed (no deps: the venv sees this interpreter's packages) into a fresh venv and run from a folder
    that holds no checkout: imports resolve to the venv, and the entry point finds the shipped model."""
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    py = str(env_dir / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["JAX_PLATFORMS"] = "cpu"
    res = subprocess.run([sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "-q", wheel],
                         capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = subprocess.run([py, "-c", "import d2cache_jax, experiments, checkpoints_convert.convert as c; "
                            "print(d2cache_jax.__file__); print(c.__file__)"],
                           cwd=work, capture_output=True, text=True, timeout=600, env=env)
    assert where.returncode == 0, where.stderr
    assert all(line.startswith(str(env_dir)) for line in where.stdout.split()), where.stdout
    gen = subprocess.run([py, "-m", "experiments.generate", "--gen_length=16", "--steps=16", "--block_length=16"],
                         cwd=work, capture_output=True, text=True, timeout=600, env=env)
    assert gen.returncode == 0, gen.stderr
    assert "[none/vanilla] 16 tokens" in gen.stdout
