"""``python -m optiserve``: the same command line as the ``optiserve`` script."""

from optiserve.cli.main import main

main()
