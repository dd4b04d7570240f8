"""``python -m toolkit`` (also under ``accelerate launch -m toolkit``)."""

from toolkit.cli.main import main

if __name__ == "__main__":
    main()
