"""zooscape.data."""
