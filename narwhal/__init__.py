"""narwhal-py: a Narwhal/Bullshark validator in Python over a real, Noise-secured network."""

__version__ = "0.1.0"

__all__ = ["__version__"]
