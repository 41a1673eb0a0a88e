"""Networks: link profiles, latency projection, and parties placed in network namespaces."""
