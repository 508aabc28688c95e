"""Tuning efusion's fusion parameters end to end with PyTorch Lightning (``pip install efusion[train]``).

- :mod:`training.module`: :class:`FusionModule`, the LightningModule around :class:`efusion.Fusion`.
- :mod:`training.data`: procedural, radiance-map and folder datasets and :class:`FusionDataModule`.
- :mod:`training.tonemap`: reference tone-mapping operators that make the targets.
- :mod:`training.losses`: L1 / MSE / SSIM / mixed / MEF-SSIM losses, PSNR and SSIM scores.
- :mod:`training.callbacks`: the predict writer and the parameter-trajectory recorder.
- :mod:`training.cli`: ``python -m training fit|validate|test|predict|export``.

Submodules are imported on demand, so ``import training.tonemap`` needs only torch.
"""
