"""Parameter files: the fusion parameters as JSON or YAML, read, validated and written.

The rules are the fusion's own (:func:`efusion.params.check_value`), so a file or a command-line
flag accepts exactly what :func:`efusion.exposure_fusion` does.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from numbers import Real
from pathlib import Path
from typing import Any

from ..params import NAMES, check_value
from .errors import ImageIOError, ParamsError, one_line, output_exists
from .files import atomic_file

__all__ = ["PARAM_NAMES", "read_params", "validate_params", "write_params"]

#: keys a parameter file may hold: the keyword arguments of :func:`efusion.exposure_fusion`
PARAM_NAMES = (*NAMES, "preset")


def read_params(path: str | os.PathLike) -> dict[str, Any]:
    """Read fusion parameters from a JSON or YAML file (e.g. exported by the training).

    The file holds a mapping whose keys are among :data:`PARAM_NAMES`, for example::

        contrast: 0.4
        saturation: 1.7
        exposure: 2.5
        mu: 0.55
        levels: 4.5      # or -1 (deepest), or null / auto (the preset's automatic depth)
        preset: mertens

    ``.json`` files are parsed as JSON; anything else as YAML (which also reads JSON; needs
    PyYAML). The result can be passed as keyword arguments to :func:`efusion.exposure_fusion`.

    Raises:
        ParamsError: missing or unparsable file, not a mapping, an unknown key or a bad value;
            the message names the file and the key.
    """
    path = Path(path)
    if path.suffix.lower() in (".ckpt", ".pt", ".pth"):
        raise ParamsError(f"{path}: checkpoints are not read directly; export the tuned parameters to a .yaml or .json file")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ParamsError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ParamsError(f"{path}: is a folder, not a parameter file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ParamsError(f"{path}: cannot read ({getattr(error, 'strerror', None) or one_line(error)})") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ParamsError(f"{path}: not valid JSON ({error.msg} at line {error.lineno}, column {error.colno})") from None
    else:
        try:
            import yaml  # type: ignore[import-untyped]
        except ImportError:
            raise ParamsError(f"{path}: reading YAML needs PyYAML (pip install pyyaml), or use a .json file") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(error, "problem", None) or one_line(error)
            raise ParamsError(f"{path}: not valid YAML ({problem}{where})") from None
    if not isinstance(data, Mapping):
        kind = "an empty file" if data is None else f"a {type(data).__name__}"
        raise ParamsError(f"{path}: expected a mapping of parameter names to values, found {kind}")
    return validate_params(data, source=str(path))


def validate_params(params: Mapping[str, Any], *, source: str = "params") -> dict[str, Any]:
    """Check fusion parameters and return them as plain Python values.

    The rules are the fusion's own (:func:`efusion.params.check_value`): exponents (contrast, saturation,
    exposure) numbers >= 0, ``mu`` a number, ``sigma`` a number > 0 (``mu`` and ``sigma`` may also
    be a list of one value per channel, e.g. R, G, B), ``levels`` ``None`` (or ``"auto"``) or a
    number >= 1 or <= -1, ``preset`` one of :data:`efusion.PRESETS`; every number finite.
    Tensors and numpy values are accepted (converted with ``.tolist()``), so a trained module's
    values can be passed directly; a one-element list becomes a number.

    Raises:
        ParamsError: naming ``source`` and the offending key.
    """
    from ..presets import PRESETS

    checked: dict[str, Any] = {}
    for key, value in params.items():
        if key not in PARAM_NAMES:
            raise ParamsError(f"{source}: unknown parameter {key!r} (expected some of: {', '.join(PARAM_NAMES)})")
        if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
            value = value.tolist()  # tensors and numpy values: a number or (nested) lists
        if key in ("mu", "sigma") and isinstance(value, (list, tuple)):
            if not value or any(isinstance(v, (list, tuple)) for v in value):
                raise ParamsError(f"{source}: {key!r} must be a number or a list of numbers (one per channel), got {value!r}")
            values = [_check_param(key, v, source, []) for v in value]
            checked[key] = values[0] if len(values) == 1 else values
            continue
        if isinstance(value, (list, tuple)):
            if len(value) != 1:
                raise ParamsError(f"{source}: {key!r} must be a single number, got {value!r}")
            value = value[0]
        checked[key] = _check_param(key, value, source, sorted(PRESETS))
    return checked


def _check_param(key: str, value, source: str, presets: list[str]):
    """One value, checked by the library's own rules (:func:`efusion.params.check_value`, what
    :func:`efusion.exposure_fusion` applies), so a file or flag accepts exactly what the fusion does;
    files also refuse infinities, which the fusion would turn into NaN."""
    if key == "preset":
        if not isinstance(value, str) or value not in presets:
            raise ParamsError(f"{source}: 'preset' must be one of {', '.join(presets)}, got {value!r}")
        return value
    if key == "levels" and (value is None or value == "auto"):  # "auto" as on the command line
        return None
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ParamsError(f"{source}: {key!r} must be a finite number, got {value!r}")
    try:
        check_value(key, value, label=repr(key))
    except (TypeError, ValueError) as error:
        raise ParamsError(f"{source}: {error}") from None
    if key == "levels":
        return int(value) if isinstance(value, int) else float(value)
    return float(value)


def write_params(path: str | os.PathLike, params: Mapping[str, Any], *, overwrite: bool = True) -> Path:
    """Write fusion parameters for :func:`read_params` (and ``efusion fuse --params``).

    The values are validated first (tensors become plain numbers); ``.json`` writes JSON,
    ``.yaml``/``.yml`` writes YAML (needs PyYAML). The file appears complete or not at all
    (written aside, then renamed into place); with ``overwrite=False`` an existing file is an
    error and is left as it is.

    Raises:
        ParamsError: an unknown key, a bad value, an unsupported suffix, or (without
            ``overwrite``) the file exists.
    """
    path = Path(path)
    checked = validate_params(params, source=str(path))
    suffix = path.suffix.lower()
    if suffix == ".json":
        text = json.dumps(checked, indent=2) + "\n"
    elif suffix in (".yaml", ".yml"):
        try:
            import yaml  # type: ignore[import-untyped]
        except ImportError:
            raise ParamsError(f"{path}: writing YAML needs PyYAML (pip install pyyaml), or use a .json file") from None
        text = yaml.safe_dump(checked, sort_keys=False)
    else:
        raise ParamsError(f"{path}: unsupported parameter file suffix {suffix or '(none)'!r} (use .json, .yaml or .yml)")
    try:
        if not overwrite and path.exists():
            raise output_exists(path)
        with atomic_file(path, overwrite=overwrite) as fh:
            fh.write(text.encode("utf-8"))
    except ImageIOError as error:
        raise ParamsError(str(error)) from None
    return path
