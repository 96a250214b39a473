"""zooscape.models."""
