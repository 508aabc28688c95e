"""Training data: exposure brackets with the image their fusion should produce.

Every dataset yields dictionaries

- ``frames``: ``[N, C, H, W]`` float in [0, 1], the bracket;
- ``target``: ``[C, H, W]`` float in [0, 1], the reference image (absent when there is none,
  e.g. for prediction or with the target-free ``mef_ssim`` loss); a target made by the fusion
  (``target_params``) is the raw fusion, which can overshoot [0, 1] slightly;
- ``mask``: ``[N, 1, H, W]`` (only when frames have ignored pixels: alpha, marked borders);
- ``name``: a string naming the scene (and crop).

Three sources:

- :class:`SyntheticScenes`: procedural HDR scenes from :func:`efusion.synthetic.hdr_scene`,
  photographed by :func:`efusion.synthetic.render_exposures`; no files needed.
- :class:`RadianceMaps`: radiance maps on disk (Radiance ``.hdr`` read with OpenCV, OpenEXR
  ``.exr`` read with the OpenEXR bindings), rendered the same way.
- :class:`SceneFolders`: real brackets, one folder per scene holding the frames and either a
  reference image (``reference.png`` ..., the layout of SICE-style datasets, or a separate label
  folder) or a radiance map (``memorial.hdr`` beside Debevec's frames).

The target of a rendered bracket is its radiance map tone-mapped by a reference operator
(:mod:`training.tonemap`), or, with ``target_params``, the bracket fused by
:func:`efusion.exposure_fusion` with those parameters (to test that training recovers them; the
fusion of the cropped / flipped bracket, so the hidden parameters reproduce every item).

Randomness (crop positions, flips, which scene a procedural index draws) is a function of
``(seed, epoch, index)`` only: :class:`EpochSampler` hands the epoch to the dataset with each
index, so a resumed run or another rank sees exactly the data an uninterrupted run would.

Datasets are lazy: constructing one (from a config) reads nothing; :meth:`SceneDataset.setup`
(called by :class:`FusionDataModule` in ``setup``) reads and checks everything it can, and fails
with a :class:`DatasetError` naming the file at fault.

The package is split by job: :mod:`~training.data.readers` (radiance maps, file lists),
:mod:`~training.data.augment` (joint crop and flip), :mod:`~training.data.base`
(:class:`SceneDataset`), one module per source (:mod:`~training.data.procedural`,
:mod:`~training.data.radiance_maps`, :mod:`~training.data.folders`),
:mod:`~training.data.sampler`, :mod:`~training.data.batching` (:func:`collate`) and
:mod:`~training.data.datamodule`. Every name is re-exported here, so configs keep naming
``training.data.SyntheticScenes`` and so on.
"""
from __future__ import annotations

from .base import SceneDataset
from .batching import collate
from .datamodule import FusionDataModule
from .errors import DatasetError
from .folders import REFERENCE_NAMES as REFERENCE_NAMES  # not in __all__, importable as before
from .folders import SceneFolders
from .procedural import SyntheticScenes
from .radiance_maps import RadianceMaps
from .readers import RADIANCE_SUFFIXES, read_radiance
from .sampler import EpochSampler

__all__ = [
    "RADIANCE_SUFFIXES",
    "DatasetError",
    "EpochSampler",
    "FusionDataModule",
    "RadianceMaps",
    "SceneDataset",
    "SceneFolders",
    "SyntheticScenes",
    "collate",
    "read_radiance",
]
