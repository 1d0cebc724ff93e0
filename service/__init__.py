"""HTTP service: category suggestions and similar-product search over the index."""
