"""The package's folders in layers: a module imports only from its own folder or from layers below
(the README's developer section lists them), so each folder can be read and changed on its own."""

from __future__ import annotations

import re
from pathlib import Path

import mura_cli

LAYERS = [
    {
        "choices",
        "config",
        "environment",
        "wording",
        "errors",
        "files",
        "resources",
        "__init__",
    },  # pure data, configs, errors, file basics
    {"inputs"},
    {"model"},
    {"inference"},
    {"results"},
    {"report"},
    {"scoring", "evaluation"},
    {"training"},  # validates with evaluation's metrics
    {"api"},
    {"cli"},
    {"__main__"},
]
LEVEL = {name: level for level, names in enumerate(LAYERS) for name in names}
IMPORT = re.compile(r"^\s*(?:from|import) mura_cli(?:\.(\w+))?", re.M)


def test_imports_only_run_downwards():
    package = Path(mura_cli.__file__).parent
    upward = []
    for path in sorted(package.rglob("*.py")):
        home = path.relative_to(package).parts[0].removesuffix(".py")
        assert home in LEVEL, f"{home} is in no layer: add it to the README's module map and to LAYERS"
        for match in IMPORT.finditer(path.read_text(encoding="utf-8")):
            target = match.group(1) or "__init__"
            if target == home or LEVEL[home] == 0 == LEVEL[target]:
                continue
            if LEVEL[target] >= LEVEL[home]:
                upward.append(f"{path.relative_to(package)} imports mura_cli.{target}")
    assert not upward, upward


def test_no_command_line_library_below_the_cli():
    package = Path(mura_cli.__file__).parent
    for path in package.rglob("*.py"):
        if path.relative_to(package).parts[0] in ("cli", "__main__.py"):
            continue
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"^\s*(?:import|from) (typer|rich)\b", text, re.M), path


def test_only_the_environment_module_and_the_cli_read_environment_variables():
    package = Path(mura_cli.__file__).parent
    readers = [
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if path.relative_to(package).parts[0] not in ("cli", "environment.py")
        and re.search(r"os\.environ|os\.getenv|getenv\(", path.read_text(encoding="utf-8"))
    ]
    assert not readers, readers


def test_an_explicit_environment_replaces_the_variables(tmp_path, monkeypatch):
    from mura_cli import environment
    from mura_cli.inference.engines import default_cache_dir
    from mura_cli.model.factory import model_search_dirs

    monkeypatch.setenv("MURA_CLI_ENGINE_CACHE", str(tmp_path / "from-variable"))
    assert default_cache_dir() == tmp_path / "from-variable"  # read when asked, not at import
    chosen = environment.Environment(cache_home=tmp_path / "home", models_dir=tmp_path / "mine")
    with environment.using(chosen):
        assert default_cache_dir() == tmp_path / "home" / "mura-cli" / "engines"
        assert model_search_dirs()[0] == tmp_path / "mine"
    assert default_cache_dir() == tmp_path / "from-variable"


def test_malformed_rank_variables_count_as_unset():
    from mura_cli.environment import Environment

    env = Environment.from_os({"WORLD_SIZE": "", "RANK": "x", "LOCAL_RANK": "1"})
    assert (env.world_size, env.rank, env.local_rank) == (1, 0, 1)
