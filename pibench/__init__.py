"""pibench: private-inference benchmarking of ReLU-linearized networks."""

__version__ = "0.1.0"
