"""``python -m fem_dnn``: the ``fem-dnn`` command line."""

from fem_dnn.app.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
