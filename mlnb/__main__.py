"""``python -m mlnb``: the command line."""

from mlnb.cli import main

main()
