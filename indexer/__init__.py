"""Core library: catalog -> (images, text) -> encoders -> vectors -> FAISS store -> k-NN.

The service and the evaluation both stand on this package and never on each other.
"""

__version__ = "0.1.0"
