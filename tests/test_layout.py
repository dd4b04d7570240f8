"""House rules that keep the CLI thin and fast: checked on the source, so they cannot drift."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import time
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "toolkit"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_library_never_imports_typer_or_the_cli():
    offenders = []
    for path in PKG.rglob("*.py"):
        if path.parts[len(PKG.parts)] in ("cli", "__main__.py"):
            continue
        for name in _imports(path):
            if name == "typer" or name.startswith("typer.") or name == "toolkit.cli" or name.startswith("toolkit.cli."):
                offenders.append(f"{path.relative_to(REPO)} imports {name}")
    assert not offenders, offenders


def test_import_contract_lists_every_library_package():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    (forbidden,) = [c for c in config["tool"]["importlinter"]["contracts"] if c["type"] == "forbidden"]
    listed = set(forbidden["source_modules"])
    packages = {f"toolkit.{p.name}" for p in PKG.iterdir() if (p / "__init__.py").is_file() and p.name != "cli"}
    packages |= {f"toolkit.{p.stem}" for p in PKG.glob("*.py") if p.stem not in ("__init__", "__main__")}
    assert packages == listed


def test_help_is_fast_and_imports_no_heavy_library():
    code = ("import contextlib, io, json, sys\n"
            "from toolkit.cli.main import run\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
            "    rc = run(['--help'])\n"
            "heavy = [m for m in ('torch', 'timm', 'pandas', 'numpy', 'albumentations', 'sklearn', 'optuna') if m in sys.modules]\n"
            "print(json.dumps({'rc': rc, 'heavy': heavy, 'help': out.getvalue()}))")
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    elapsed = time.perf_counter() - start
    result = json.loads(out.stdout)
    assert result["rc"] == 0 and "train" in result["help"]
    assert result["heavy"] == []
    assert elapsed < 3.0  # loose on a shared machine: interpreter start included; typically ~0.3 s


def test_every_command_has_help_with_an_example():
    import typer.main

    from toolkit.cli.main import app

    group = typer.main.get_command(app)
    missing = []
    for name, cmd in group.commands.items():
        subs = getattr(cmd, "commands", None) or {name: cmd}
        for sub_name, sub in subs.items():
            if "Example:" not in (sub.help or ""):
                missing.append(f"{name} {sub_name}")
    assert not missing, missing


def test_no_module_is_over_600_lines():
    long = {str(p.relative_to(REPO)): n for p in PKG.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 600}
    assert not long, long


def test_only_the_store_opens_run_files_by_name():
    """`run.file("...")` with a literal name belongs to the store (and the checkpoint record in models/)."""
    offenders = []
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG)
        if rel.parts[0] == "store":
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "file"
                    and node.args and isinstance(node.args[0], ast.Constant | ast.JoinedStr)):
                offenders.append(f"{rel}:{node.lineno}")
    assert not offenders, offenders


def test_no_private_name_is_imported_across_packages():
    offenders = []
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG)
        own = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if not (isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("toolkit.")):
                continue
            other = node.module.split(".")[1]
            for alias in node.names:
                if alias.name.startswith("_") and other != own:
                    offenders.append(f"{rel}: {node.module}.{alias.name}")
    assert not offenders, offenders


def test_cleanlab_is_imported_only_by_clean():
    """cleanlab (AGPL-3.0 in older releases) stays behind `clsctl clean`, in one module."""
    users = sorted(str(p.relative_to(PKG)) for p in PKG.rglob("*.py")
                   if any(n == "cleanlab" or n.startswith("cleanlab.") for n in _imports(p)))
    assert users == ["clean/labels.py"]
