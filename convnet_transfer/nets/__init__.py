"""Stage 3: the catalog of nets and their rendering into generated/ (catalog, netgen, architectures)."""
