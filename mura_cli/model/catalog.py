"""The models a user can name: user models ($MURA_CLI_MODELS) and those shipped with mura-cli."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mura_cli import choices
from mura_cli.config import ModelConfig
from mura_cli.errors import ModelError
from mura_cli.model.factory import CONFIG_FILE, WEIGHTS_FILE, model_search_dirs

EVALUATION_FILE = (
    "evaluation.json"  # metrics.json of `mura-cli evaluate` on held-out data, kept with the model
)


@dataclass(frozen=True)
class ModelEntry:
    name: str
    path: Path
    source: str  # 'user' or 'shipped'
    config: ModelConfig | None
    problem: str = ""
    evaluation: dict | None = None
    is_default: bool = False

    def headline(self) -> dict:
        """Held-out study-level AUROC/sensitivity/specificity with CIs, when an evaluation is kept."""
        if not self.evaluation:
            return {}
        overall = self.evaluation.get("study", {}).get("overall", {})
        return {k: overall[k] for k in ("auroc", "kappa", "sensitivity", "specificity") if k in overall}


def _entry(folder: Path, source: str) -> ModelEntry:
    name = folder.name
    try:
        cfg = ModelConfig.load(folder / CONFIG_FILE)
        problem = "" if (folder / WEIGHTS_FILE).is_file() else f"{WEIGHTS_FILE} missing"
    except ModelError as exc:
        cfg, problem = None, str(exc)
    evaluation = None
    if (folder / EVALUATION_FILE).is_file():
        try:
            evaluation = json.loads((folder / EVALUATION_FILE).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            problem = problem or f"{EVALUATION_FILE} unreadable"
    return ModelEntry(name, folder, source, cfg, problem, evaluation, name == choices.DEFAULT_MODEL_NAME)


def list_models() -> list[ModelEntry]:
    dirs = model_search_dirs()
    entries, seen = [], set()
    for index, folder in enumerate(dirs):
        source = "user" if index == 0 and len(dirs) > 1 else "shipped"
        if not folder.is_dir():
            continue
        for sub in sorted(p for p in folder.iterdir() if (p / CONFIG_FILE).is_file()):
            if sub.name not in seen:  # a user model shadows a shipped one of the same name
                seen.add(sub.name)
                entries.append(_entry(sub, source))
    return entries
