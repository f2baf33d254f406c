"""xattr: attribution methods and their evaluations, configured with Hydra, batched on the GPU."""

__version__ = "0.1.0"
