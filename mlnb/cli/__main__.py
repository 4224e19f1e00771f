"""Run the command line as ``python -m mlnb.cli``."""

from mlnb.cli import main

main()
