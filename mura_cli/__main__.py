"""`python -m mura_cli`; guarded, since report workers start by importing the main module."""

from mura_cli.cli.commands import main

if __name__ == "__main__":
    main()
