"""zooscape.landscape."""
