"""zooscape.phase."""
