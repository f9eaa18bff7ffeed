"""`python -m sstm.cli`."""

from sstm.cli import main

main()
