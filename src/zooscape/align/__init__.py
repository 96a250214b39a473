"""zooscape.align."""
