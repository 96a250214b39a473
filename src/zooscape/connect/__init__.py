"""zooscape.connect."""
