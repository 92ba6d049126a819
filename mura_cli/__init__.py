"""mura-cli: abnormality scoring of musculoskeletal radiographs (the MURA task).

The library works without the command line (nothing is imported until it is used, so that the CLI
starts fast):

    import mura_cli
    model = mura_cli.load_model()                       # default model; or a folder or a name
    result = mura_cli.score_images([array_or_path, ...], model)
    mura_cli.score_folder(mura_cli.ScoreConfig(input="studies", out_dir="results"))  # what `score` does
"""

__version__ = "0.1.0"

_LAZY = {
    "load_model": "mura_cli.api",
    "score_images": "mura_cli.api",
    "wrap_module": "mura_cli.api",
    "ImageScores": "mura_cli.api",
    "Predictor": "mura_cli.inference.predictor",
    "score_folder": "mura_cli.scoring.score",
    "ScoreConfig": "mura_cli.config",
    "ModelConfig": "mura_cli.config",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mura_cli' has no attribute {name!r}")
