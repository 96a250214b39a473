"""``python -m zooscape ...`` runs the ``zooscape`` command line."""

import sys

from zooscape.cli import main

if __name__ == "__main__":
    sys.exit(main())
