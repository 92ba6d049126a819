"""mura-cli: abnormality scoring of musculoskeletal radiographs (the MURA task).

The library is usable without the command line: ``from mura_cli.score import score_folder``.
"""

__version__ = "0.1.0"
