"""``python -m zooscape.cli`` runs the ``zooscape`` command."""

from zooscape.cli import run

if __name__ == "__main__":
    run()
