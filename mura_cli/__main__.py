from mura_cli.cli import main

main()
