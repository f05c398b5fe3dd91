"""``python -m vfl.cli``: the same command line as the ``vfl`` console script."""

from vfl.cli import app

if __name__ == "__main__":
    app(prog_name="vfl")
