"""``python -m rtserve``: run the command-line interface (see ``rtserve.cli``)."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
