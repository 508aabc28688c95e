"""efusion: differentiable Mertens exposure fusion for PyTorch."""
__version__ = "0.1.0"
