"""The one place that reads the process environment. Everything else asks `current()` for a frozen
`Environment`: where user models and caches live, and the ranks torchrun gives a training process.

A caller that wants no environment variables involved (a notebook, a service, a test) passes its
own value with `using(Environment(...))`; without one, each call reads the variables as they are then
(so a variable set after import still counts)."""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

MODELS_DIR_ENV = "MURA_CLI_MODELS"  # user model folders, searched before the shipped ones
DECODED_CACHE_ENV = "MURA_CLI_CACHE"  # decoded training images; default ~/.cache/mura-cli/decoded
ENGINE_CACHE_ENV = "MURA_CLI_ENGINE_CACHE"  # engine exports; default ~/.cache/mura-cli/engines


@dataclass(frozen=True)
class Environment:
    cache_home: Path  # $XDG_CACHE_HOME, default ~/.cache
    models_dir: Path | None = None
    decoded_cache: Path | None = None
    engine_cache: Path | None = None
    world_size: int = 1  # torchrun: WORLD_SIZE, RANK, LOCAL_RANK
    rank: int = 0
    local_rank: int = 0
    glibc_tunables: str = ""  # recorded in run.json (the CLI tunes malloc for CPU inference)

    @property
    def decoded_cache_dir(self) -> Path:
        return self.decoded_cache or self.cache_home / "mura-cli" / "decoded"

    @property
    def engine_cache_dir(self) -> Path:
        return self.engine_cache or self.cache_home / "mura-cli" / "engines"

    @classmethod
    def from_os(cls, environ: Mapping[str, str] | None = None) -> Environment:
        env = os.environ if environ is None else environ

        def path(name: str) -> Path | None:
            return Path(env[name]).expanduser() if env.get(name) else None

        def number(name: str, default: int) -> int:  # a malformed value counts as unset
            try:
                return int(env.get(name, default))
            except ValueError:
                return default

        return cls(
            cache_home=path("XDG_CACHE_HOME") or Path.home() / ".cache",
            models_dir=path(MODELS_DIR_ENV),
            decoded_cache=path(DECODED_CACHE_ENV),
            engine_cache=path(ENGINE_CACHE_ENV),
            world_size=number("WORLD_SIZE", 1),
            rank=number("RANK", 0),
            local_rank=number("LOCAL_RANK", 0),
            glibc_tunables=env.get("GLIBC_TUNABLES", ""),
        )


_chosen: contextvars.ContextVar[Environment | None] = contextvars.ContextVar(
    "mura_cli_environment", default=None
)


def current() -> Environment:
    """The environment in force: the innermost `using(...)` of this thread or task, else the process's
    variables now."""
    return _chosen.get() or Environment.from_os()


@contextlib.contextmanager
def using(environment: Environment) -> Iterator[Environment]:
    token = _chosen.set(environment)
    try:
        yield environment
    finally:
        _chosen.reset(token)


def child_environment(python_path_first: str | None = None) -> dict[str, str]:
    """The variables for a child process: this process's, with ``python_path_first`` put at the head
    of its PYTHONPATH."""
    env = dict(os.environ)
    if python_path_first:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [python_path_first, env.get("PYTHONPATH")]))
    return env
