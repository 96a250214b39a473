"""zooscape.cli."""
