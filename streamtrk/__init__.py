"""streamtrk: streaming, trigger-level particle-track reconstruction."""

__version__ = "0.1.0"
