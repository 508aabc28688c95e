"""efusion.io.params: parameter files (JSON, YAML) and their validation."""
from __future__ import annotations

import json
from typing import ClassVar

import numpy as np
import pytest
import torch

from efusion.io import (
    ParamsError,
    read_params,
    validate_params,
    write_params,
)

from _image_files import leftovers


class TestParams:
    PARAMS: ClassVar[dict] = {"contrast": 0.4, "saturation": 1.7, "exposure": 2.5, "mu": 0.55, "sigma": 0.2, "levels": 4.5, "preset": "opencv"}

    @pytest.mark.parametrize("name", ["p.yaml", "p.yml", "p.json"])
    def test_round_trip(self, tmp_path, name):
        write_params(tmp_path / name, self.PARAMS)
        assert read_params(tmp_path / name) == self.PARAMS
        assert leftovers(tmp_path) == []

    def test_tensors_and_null_levels(self, tmp_path):
        write_params(tmp_path / "p.json", {"contrast": torch.tensor(0.25), "levels": None, "mu": np.float32(0.5)})
        assert json.loads((tmp_path / "p.json").read_text()) == {"contrast": 0.25, "levels": None, "mu": 0.5}
        assert read_params(tmp_path / "p.json")["levels"] is None

    @pytest.mark.parametrize("name", ["p.yaml", "p.json"])
    def test_per_channel_mu_sigma(self, tmp_path, name):
        # one value per channel (as Fusion.export gives them); a one-element list is a number
        write_params(tmp_path / name, {"mu": [0.4, 0.5, 0.6], "sigma": np.array([0.25, 0.2, 0.3]), "levels": torch.tensor([3.0])})
        assert read_params(tmp_path / name) == {"mu": [0.4, 0.5, 0.6], "sigma": [0.25, 0.2, 0.3], "levels": 3.0}
        assert validate_params({"mu": [0.45]}) == {"mu": 0.45}

    def test_levels_auto_as_on_the_command_line(self, tmp_path):
        (tmp_path / "p.yaml").write_text("levels: auto\n")
        assert read_params(tmp_path / "p.yaml") == {"levels": None}

    def test_integer_levels_stay_integer(self, tmp_path):
        (tmp_path / "p.yaml").write_text("levels: -1\ncontrast: 1\n")
        params = read_params(tmp_path / "p.yaml")
        assert params == {"levels": -1, "contrast": 1.0} and isinstance(params["levels"], int)

    def test_unknown_key_named(self, tmp_path):
        (tmp_path / "p.yaml").write_text("contrast: 1\ngamma: 2\n")
        with pytest.raises(ParamsError, match=r"p\.yaml: unknown parameter 'gamma'"):
            read_params(tmp_path / "p.yaml")

    @pytest.mark.parametrize(
        "key, value, message",
        [
            ("sigma", 0, "'sigma' must be > 0"),
            ("contrast", -1, "'contrast' must be >= 0"),
            ("levels", 0.5, "'levels' must be >= 1"),
            ("preset", "matlab", "'preset' must be one of mertens, opencv"),
            ("mu", "half", "'mu' must be a finite number"),
            ("exposure", True, "'exposure' must be a finite number"),
            ("saturation", float("nan"), "'saturation' must be a finite number"),
            ("mu", [], "'mu' must be a number or a list of numbers"),
            ("sigma", [0.2, 0.0], "'sigma' must be > 0"),
            ("mu", [[0.5]], "'mu' must be a number or a list of numbers"),
            ("levels", [2, 3], "'levels' must be a single number"),
        ],
    )
    def test_bad_values_named(self, tmp_path, key, value, message):
        (tmp_path / "p.json").write_text(json.dumps({key: value}))
        with pytest.raises(ParamsError, match=rf"p\.json: {message}"):
            read_params(tmp_path / "p.json")

    @pytest.mark.parametrize(
        "name, text, message",
        [
            ("p.yaml", "[1, 2]", "expected a mapping .* found a list"),
            ("p.yaml", "", "found an empty file"),
            ("p.yaml", "contrast: [1\n", "not valid YAML"),
            ("p.json", "{'contrast': 1}", "not valid JSON"),
            ("p.ckpt", "", "checkpoints are not read directly"),
        ],
    )
    def test_bad_files(self, tmp_path, name, text, message):
        (tmp_path / name).write_text(text)
        with pytest.raises(ParamsError, match=message):
            read_params(tmp_path / name)

    def test_missing_file_and_bad_suffix(self, tmp_path):
        with pytest.raises(ParamsError, match="no such file"):
            read_params(tmp_path / "missing.yaml")
        with pytest.raises(ParamsError, match="unsupported parameter file suffix"):
            write_params(tmp_path / "p.txt", {})
        with pytest.raises(ParamsError, match="unknown parameter 'gamma'"):
            write_params(tmp_path / "p.json", {"gamma": 1})
        assert list(tmp_path.iterdir()) == []

    def test_validate_is_usable_directly(self):
        assert validate_params({"levels": 3}, source="x") == {"levels": 3}
        with pytest.raises(ParamsError, match="^x: 'sigma'"):
            validate_params({"sigma": -1}, source="x")


