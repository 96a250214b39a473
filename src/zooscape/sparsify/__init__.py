"""zooscape.sparsify."""
