"""``python -m zooscape ...`` runs the ``zooscape`` command line."""

from zooscape.cli import run

if __name__ == "__main__":
    run()
