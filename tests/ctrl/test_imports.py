"""The dependency graph (docs/architecture.md, Layout): every module of the
package imports, and the import contracts of pyproject.toml hold and would
catch a module that breaks them."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import toml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PYPROJECT = toml.load(os.path.join(REPO, "pyproject.toml"))
PACKAGE_DIRS = PYPROJECT["tool"]["setuptools"]["package-dir"]   # {"srrs.ctrl": "ctrl", …}
CONTRACTS = PYPROJECT["tool"]["importlinter"]["contracts"]
LINT = [sys.executable, os.path.join(REPO, "ci", "lint-imports")]


def _modules() -> list:
    """Every module of the package, from its folders (not from what imports)."""
    out = []
    for pkg, folder in sorted(PACKAGE_DIRS.items()):
        for f in sorted(os.listdir(os.path.join(REPO, folder))):
            if f.endswith(".py"):
                out.append(pkg if f == "__init__.py" else f"{pkg}.{f[:-3]}")
    return out


def test_every_folder_with_python_is_a_package():
    """A new folder of Python under a package is listed in pyproject.toml, so the
    walk below and the installed package both see it."""
    assert set(PYPROJECT["tool"]["setuptools"]["packages"]) == set(PACKAGE_DIRS)
    for folder in PACKAGE_DIRS.values():
        for d in os.listdir(os.path.join(REPO, folder)):
            sub = os.path.join(REPO, folder, d)
            assert not os.path.isfile(os.path.join(sub, "__init__.py")), \
                f"{folder}/{d} is a package missing from pyproject.toml package-dir"


def test_every_module_imports():
    """One fresh interpreter imports every module with plain `import` statements:
    a broken import (or a module missing from the build) fails here, never skips."""
    mods = _modules()
    assert {"srrs.ctrl.daemon", "srrs.ffi.binding", "srrs.nvmf.service", "srrs.vhost.service",
            "srrs.units"} <= set(mods)
    r = subprocess.run([sys.executable, "-c", "".join(f"import {m}\n" for m in mods)],
                       capture_output=True, text=True, timeout=60, cwd=REPO)
    assert r.returncode == 0, r.stderr


def test_srrs_pkg_modules_are_declared_leaves():
    """Each module of srrs_pkg/ (a leaf any folder may import) is in the leaf contract."""
    (leaf,) = [c for c in CONTRACTS if "leaves" in c["name"]]
    top = [m for m in _modules() if m.count(".") == 1 and m.split(".")[1] not in
           {p.split(".")[1] for p in PACKAGE_DIRS if "." in p}]
    assert top and sorted(leaf["source_modules"]) == sorted(top)


def test_contracts_hold():
    r = subprocess.run(LINT, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"Contracts: {len(CONTRACTS)} kept, 0 broken." in r.stdout, r.stdout


@pytest.mark.parametrize("folder, text, chain", [
    ("nvmf", "from ..ctrl import config\n", "srrs.nvmf.bad -> srrs.ctrl.config"),
    ("vhost", "from ..nvmf import config\n", "srrs.vhost.bad -> srrs.nvmf.config"),
    ("ffi", "from ..vhost import proto\n", "srrs.ffi.bad -> srrs.vhost.proto"),
])
def test_contracts_catch_a_violation(tmp_path, folder, text, chain):
    """The same check on the package with one module added that breaks a layer:
    it fails and names the import (so the check sees the subpackages at all)."""
    root = str(tmp_path / "root")
    assert subprocess.run(LINT + ["--lay-out", root], timeout=30).returncode == 0
    link = os.path.join(root, "srrs", folder)
    src = os.readlink(link)
    os.unlink(link)
    os.mkdir(link)
    for f in os.listdir(src):
        if f.endswith(".py"):
            os.symlink(os.path.join(src, f), os.path.join(link, f))
    with open(os.path.join(link, "bad.py"), "w") as f:
        f.write(text)
    r = subprocess.run(LINT + ["--check", root], capture_output=True, text=True, timeout=120,
                       cwd=REPO)
    assert r.returncode != 0, r.stdout
    assert "1 broken" in r.stdout and chain in r.stdout, r.stdout


def test_services_are_imported_start_functions():
    """The daemon's one registry of services: imported modules' start(), in start order."""
    from srrs.ctrl import cluster, cluster_sync, metrics, pair, pool
    from srrs.ctrl.daemon import Controller
    from srrs.nvmf import service as nvmf_service
    from srrs.vhost import service as vhost_service

    assert Controller.SERVICES == (("pool", pool.start, "pool"),
                                   ("cluster", cluster.start, "cluster"),
                                   ("pair", pair.start, "pair"),
                                   ("nvmf", nvmf_service.start, "nvmf"),
                                   ("catalog_sync", cluster_sync.start, "cluster"),
                                   ("vhost", vhost_service.start, "vhost"),
                                   ("metrics", metrics.start, "metrics"))


# Module-name strings still being replaced by other parts of issue 12.
PENDING = {}


def test_no_module_is_loaded_by_name():
    """No importorskip, find_spec, import_module or __import__ in our code, tests
    or scripts: a module of ours that does not import must fail, not vanish."""
    calls = ("importorskip(", "find_spec(", "import_module(", "__import__(")
    found = []
    for folder in sorted(set(PACKAGE_DIRS.values()) | {"tests", "ci"}):
        for dirpath, dirs, files in os.walk(os.path.join(REPO, folder)):
            dirs[:] = [d for d in dirs if d not in ("cache", "__pycache__")]
            for f in files:
                path = os.path.join(dirpath, f)
                rel = os.path.relpath(path, REPO)
                if rel in PENDING or rel == "tests/ctrl/test_imports.py" or not (
                        f.endswith(".py") or os.access(path, os.X_OK)):
                    continue
                with open(path, encoding="utf-8", errors="replace") as fh:
                    for n, line in enumerate(fh, 1):
                        if any(c in line for c in calls):
                            found.append(f"{rel}:{n}: {line.strip()}")
    assert not found, "\n".join(found)
