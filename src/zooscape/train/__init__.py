"""zooscape.train."""
