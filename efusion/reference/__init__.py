"""The paper in plain PyTorch: the oracle every backend is tested against, and the path that runs
under autograd of any order, ``torch.func``, ``torch.compile`` (with gradients) and half precision.

- :mod:`.measures`: contrast, saturation, well-exposedness, the raw weights and their normalisation
  (Mertens, Kautz & Van Reeth, "Exposure Fusion", Pacific Graphics 2007, Section 3.1);
- :mod:`.masks`: masked pixels filled from unmasked neighbours (push-pull normalised convolution);
- :mod:`.pyramid`: the 5-tap Gaussian / Laplacian pyramid (Burt & Adelson 1983);
- :mod:`.blend`: the Laplacian blend (Section 3.2), textbook and streaming.
"""
from . import blend, masks, measures, pyramid

__all__ = ["blend", "masks", "measures", "pyramid"]
