"""zooscape.zoo."""
