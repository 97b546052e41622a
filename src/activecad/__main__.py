"""``python -m activecad``: the command line, as torchrun needs it (``-m activecad``)."""

from activecad.cli.main import main

if __name__ == "__main__":
    main()
