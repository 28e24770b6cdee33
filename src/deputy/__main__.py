"""`python -m deputy` runs the command line."""

from deputy.cli.main import main

main()
