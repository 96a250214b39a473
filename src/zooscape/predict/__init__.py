"""zooscape.predict."""
