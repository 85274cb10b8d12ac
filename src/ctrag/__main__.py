"""``python -m ctrag``: the same command line as the ``ctrag`` script."""

from ctrag.cli import entrypoint

if __name__ == "__main__":
    entrypoint()
