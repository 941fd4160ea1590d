"""Model providers behind small interfaces: embeddings (and chat), online or offline."""
