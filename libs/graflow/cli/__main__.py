"""``python -m graflow.cli``: the ``graflow`` command."""

from graflow.cli import main

main()
