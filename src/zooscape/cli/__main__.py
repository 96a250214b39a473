"""``python -m zooscape.cli`` runs the ``zooscape`` command."""

import sys

from zooscape.cli import main

if __name__ == "__main__":
    sys.exit(main())
