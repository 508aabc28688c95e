"""``efusion eval`` (MEF-SSIM, PSNR and SSIM from the command line); the metrics themselves are
tested in tests/metrics/."""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

import efusion
from efusion import synthetic
from efusion.metrics import RGB_TO_GRAY_WEIGHTS, mef_ssim
from efusion.quality import psnr, ssim

from _cli_helpers import as_codes, assert_one_error_line, run
from conftest import BURSTS, REFERENCE, requires_shared

RESULT_KEYS = {"image", "path", "mef_ssim", "mef_ssim_single_scale", "mef_ssim_per_scale", "psnr", "ssim"}
REPORT_KEYS = {"bracket", "frames", "width", "height", "params", "reference", "results"}


@pytest.fixture(autouse=True, scope="module")
def _one_cpu_thread():
    """Single-threaded torch for this module (see test_metrics: two threads on a shared 2-core
    machine are many times slower); restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# ----------------------------------------------------------------------------------------------
# Data and the in-memory computation the command must reproduce


def make_frames(height=48, width=64, n=3, seed=1) -> np.ndarray:
    """A synthetic bracket as uint8 ``[N, H, W, 3]`` (the generator quantises to 8 bits already)."""
    frames = synthetic.bracket(height, width, n, seed=seed)
    return (frames * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def write_frames(folder, frames: np.ndarray) -> list:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, frame in enumerate(frames):
        paths.append(folder / f"{i}.png")
        Image.fromarray(frame.squeeze(-1) if frame.shape[-1] == 1 else frame).save(paths[-1])
    return paths


def as_stack(frames: np.ndarray, dtype=torch.float32) -> torch.Tensor:
    return torch.from_numpy(frames).permute(0, 3, 1, 2).to(dtype) / 255


def luma(images: torch.Tensor) -> torch.Tensor:
    """``[..., C, H, W]`` float64 -> ``[..., 1, H, W]`` with MATLAB rgb2gray weights."""
    if images.shape[-3] == 1:
        return images
    return torch.einsum("...chw,c->...hw", images, torch.tensor(RGB_TO_GRAY_WEIGHTS, dtype=torch.float64)).unsqueeze(-3)


def reference_gray_stack(frames: np.ndarray) -> torch.Tensor:
    """The frames as the reference scores prepare them: rgb2gray of the uint8 samples, rounded."""
    return torch.floor(luma(torch.from_numpy(frames).permute(0, 3, 1, 2).double()) + 0.5)


def expected_scores(fused: torch.Tensor, frames: np.ndarray) -> tuple[float, float]:
    """(multi-scale, single-scale) MEF-SSIM of a float fused image ``[C, H, W]`` (clipped, gray, unrounded)."""
    gray = luma(fused.double().clamp(0, 1)) * 255
    score, per_scale = mef_ssim(gray, reference_gray_stack(frames), data_range=255.0, return_per_scale=True)
    return score.item(), per_scale[0].item()


def eval_json(argv, capsys) -> list[dict]:
    code, stdout, err = run(["eval", *argv, "--json"], capsys)
    assert code == 0 and err == "", err
    return [json.loads(line, parse_constant=_no_constants) for line in stdout.splitlines()]


def _no_constants(name):
    raise AssertionError(f"non-standard JSON constant {name} in the output")


def by_image(report: dict) -> dict[str, dict]:
    return {result["image"]: result for result in report["results"]}


@pytest.fixture(scope="module")
def frames8() -> np.ndarray:
    return make_frames()


@pytest.fixture
def bracket(tmp_path, frames8) -> list:
    return write_frames(tmp_path / "bracket", frames8)


# ----------------------------------------------------------------------------------------------
# Output


class TestEval:
    def test_table(self, capsys, bracket, frames8):
        code, stdout, err = run(["eval", bracket[0].parent, "--device", "cpu"], capsys)
        assert code == 0 and err == ""
        lines = stdout.splitlines()
        assert lines[0].split() == ["bracket", "image", "MEF-SSIM", "single-scale"]
        multi, single = expected_scores(efusion.exposure_fusion(as_codes(frames8)), frames8)
        assert lines[1].split() == [str(bracket[0].parent), "efusion", f"{multi:.6f}", f"{single:.6f}"]
        assert lines[2] == ""
        assert "preset mertens, contrast 1, saturation 1, exposure 1, mu 0.5, sigma 0.2, levels auto" in stdout
        assert "MEF-SSIM: Ma, Zeng & Wang" in stdout and "PSNR" not in stdout

    def test_json_structure(self, capsys, bracket):
        reports = eval_json([bracket[0].parent, "--baselines"], capsys)
        assert len(reports) == 1
        report = reports[0]
        assert set(report) == REPORT_KEYS
        assert report["bracket"] == str(bracket[0].parent)
        assert report["frames"] == [str(p) for p in bracket]
        assert (report["width"], report["height"]) == (64, 48)
        assert report["params"] == {"contrast": 1.0, "saturation": 1.0, "exposure": 1.0, "mu": 0.5, "sigma": 0.2,
                                    "levels": None, "preset": "mertens"}
        assert report["reference"] is None
        assert [r["image"] for r in report["results"]] == ["efusion", "mean", "best_frame"]
        for result in report["results"]:
            assert set(result) == RESULT_KEYS
            assert isinstance(result["mef_ssim"], float) and 0 < result["mef_ssim"] <= 1
            assert len(result["mef_ssim_per_scale"]) == 3
            assert result["mef_ssim_single_scale"] == result["mef_ssim_per_scale"][0]
            assert result["psnr"] is None and result["ssim"] is None
        assert by_image(report)["efusion"]["path"] is None
        assert by_image(report)["best_frame"]["path"] in report["frames"]

    @pytest.mark.parametrize(
        "options, params",
        [
            ([], {}),
            (["--contrast", "0.5", "--saturation", "2", "--exposure", "1.5", "--mu", "0.45", "--sigma", "0.3",
              "--levels", "2.5", "--preset", "opencv"],
             {"contrast": 0.5, "saturation": 2.0, "exposure": 1.5, "mu": 0.45, "sigma": 0.3, "levels": 2.5, "preset": "opencv"}),
        ],
        ids=["defaults", "every-option"],
    )
    def test_mef_ssim_equals_in_memory(self, capsys, bracket, frames8, options, params):
        (report,) = eval_json([*bracket, *options], capsys)  # frame files this time
        # the CLI fuses 8-bit files as their codes (measured exactly); OpenCV's preset takes float samples
        stack = as_stack(frames8) if params.get("preset") == "opencv" else as_codes(frames8)
        multi, single = expected_scores(efusion.exposure_fusion(stack, **params), frames8)
        result = by_image(report)["efusion"]
        assert result["mef_ssim"] == pytest.approx(multi, abs=1e-12)
        assert result["mef_ssim_single_scale"] == pytest.approx(single, abs=1e-12)
        assert report["params"] == {"contrast": 1.0, "saturation": 1.0, "exposure": 1.0, "mu": 0.5, "sigma": 0.2,
                                    "levels": None, "preset": "mertens", **params}

    def test_params_file_and_dtype(self, tmp_path, capsys, bracket, frames8):
        efusion.io.write_params(tmp_path / "tuned.yaml", {"contrast": 0.0, "levels": -2})
        (report,) = eval_json([bracket[0].parent, "--params", tmp_path / "tuned.yaml", "--dtype", "float64"], capsys)
        multi, _ = expected_scores(efusion.exposure_fusion(as_stack(frames8, torch.float64), contrast=0.0, levels=-2), frames8)
        assert by_image(report)["efusion"]["mef_ssim"] == pytest.approx(multi, abs=1e-12)
        assert report["params"]["contrast"] == 0.0 and report["params"]["levels"] == -2

    def test_per_channel_params_file(self, tmp_path, capsys, bracket, frames8):
        # mu/sigma with one value per channel, as efusion.Fusion.export() writes them
        efusion.io.write_params(tmp_path / "tuned.yaml", {"mu": [0.4, 0.5, 0.6], "sigma": [0.25, 0.2, 0.3]})
        (report,) = eval_json([bracket[0].parent, "--params", tmp_path / "tuned.yaml"], capsys)
        fused = efusion.exposure_fusion(as_codes(frames8), mu=[0.4, 0.5, 0.6], sigma=[0.25, 0.2, 0.3])
        assert by_image(report)["efusion"]["mef_ssim"] == pytest.approx(expected_scores(fused, frames8)[0], abs=1e-12)
        assert report["params"]["mu"] == [0.4, 0.5, 0.6]
        code, out, _ = run(["eval", bracket[0].parent, "--params", tmp_path / "tuned.yaml"], capsys)
        assert code == 0 and "mu 0.4/0.5/0.6, sigma 0.25/0.2/0.3" in out

    def test_fused_of_identical_frames_scores_one(self, tmp_path, capsys, frames8):
        paths = write_frames(tmp_path / "same", np.repeat(frames8[1:2], 3, axis=0))
        (report,) = eval_json([paths[0].parent, "--fused", paths[1]], capsys)
        fused = by_image(report)["fused"]
        assert fused["path"] == str(paths[1])
        assert fused["mef_ssim"] == pytest.approx(1.0, abs=1e-9)  # float64 rounding of the statistics
        assert fused["mef_ssim_per_scale"] == pytest.approx([1.0, 1.0, 1.0], abs=1e-9)
        # efusion's own (float, unrounded) result of identical frames is the frame to within rounding
        assert by_image(report)["efusion"]["mef_ssim"] > 0.999

    def test_fused_only(self, capsys, bracket, frames8, monkeypatch):
        def no_fusion(*args, **kwargs):
            raise AssertionError("--fused-only must not fuse")

        monkeypatch.setattr(efusion, "exposure_fusion", no_fusion)
        (report,) = eval_json([bracket[0].parent, "--fused", bracket[2], "--fused-only"], capsys)
        assert [r["image"] for r in report["results"]] == ["fused"] and report["params"] is None
        code, stdout, _ = run(["eval", bracket[0].parent, "--fused", bracket[2], "--fused-only"], capsys)
        assert code == 0 and str(bracket[2]) in stdout.splitlines()[1] and "efusion:" not in stdout

    def test_integer_files_are_scored_as_rgb2gray_of_their_samples(self, tmp_path, capsys, bracket, frames8):
        # the same pixels as an 8-bit PNG (gray rounded to whole levels) and as a float TIFF (not rounded)
        fused = efusion.exposure_fusion(as_stack(frames8)).clamp(0, 1)
        codes = (fused * 255).round().to(torch.uint8)
        Image.fromarray(codes.permute(1, 2, 0).numpy()).save(tmp_path / "fused.png")
        as_float = codes.float() / 255
        tifffile.imwrite(tmp_path / "fused.tif", as_float.permute(1, 2, 0).numpy(), photometric="rgb")
        gray_stack = reference_gray_stack(frames8)
        scores = {}
        for name in ("fused.png", "fused.tif"):
            (report,) = eval_json([bracket[0].parent, "--fused", tmp_path / name, "--fused-only"], capsys)
            scores[name] = report["results"][0]["mef_ssim"]
        rounded = torch.floor(luma(codes.double().unsqueeze(0)) + 0.5)
        assert scores["fused.png"] == pytest.approx(mef_ssim(rounded[0], gray_stack, data_range=255).item(), abs=1e-12)
        assert scores["fused.tif"] == pytest.approx(expected_scores(as_float, frames8)[0], abs=1e-12)
        assert scores["fused.png"] != scores["fused.tif"]

    def test_baselines(self, capsys, bracket, frames8):
        (report,) = eval_json([bracket[0].parent, "--baselines"], capsys)
        results = by_image(report)
        mean_score, _ = expected_scores(as_stack(frames8, torch.float64).mean(dim=0), frames8)
        assert results["mean"]["mef_ssim"] == pytest.approx(mean_score, abs=1e-12)
        gray = reference_gray_stack(frames8)
        per_frame = [mef_ssim(frame, gray, data_range=255).item() for frame in gray]
        best = int(np.argmax(per_frame))
        assert results["best_frame"]["path"] == str(bracket[best])
        assert results["best_frame"]["mef_ssim"] == pytest.approx(per_frame[best], abs=1e-12)
        assert results["efusion"]["mef_ssim"] > results["mean"]["mef_ssim"] > results["best_frame"]["mef_ssim"]

    def test_reference(self, tmp_path, capsys, bracket, frames8):
        reference = tmp_path / "truth.png"
        Image.fromarray(frames8[1]).save(reference)
        code, stdout, err = run(["eval", bracket[0].parent, "--fused", bracket[1], "--reference", reference], capsys)
        assert code == 0 and err == ""
        lines = stdout.splitlines()
        assert lines[0].split() == ["bracket", "image", "MEF-SSIM", "single-scale", "PSNR", "(dB)", "SSIM"]
        assert lines[2].split()[-2:] == ["inf", "1.000000"]  # --fused equals the reference
        assert f"against {reference}" in stdout

        (report,) = eval_json([bracket[0].parent, "--fused", bracket[1], "--reference", reference], capsys)
        assert report["reference"] == str(reference)
        results = by_image(report)
        assert results["fused"]["psnr"] is None and results["fused"]["ssim"] == 1.0  # null: infinite PSNR
        truth = as_stack(frames8[1:2], torch.float64)[0]
        result = efusion.exposure_fusion(as_codes(frames8)).double().clamp(0, 1)
        assert results["efusion"]["psnr"] == pytest.approx(psnr(result, truth).item(), abs=1e-9)
        assert results["efusion"]["ssim"] == pytest.approx(ssim(result, truth).item(), abs=1e-12)
        assert 0 < results["efusion"]["ssim"] < 1 and math.isfinite(results["efusion"]["psnr"])
        assert lines[1].split()[-2:] == [f"{results['efusion']['psnr']:.2f}", f"{results['efusion']['ssim']:.6f}"]

    def test_gray_bracket_and_gray_reference(self, tmp_path, capsys, frames8):
        gray8 = frames8[..., 1:2]
        paths = write_frames(tmp_path / "gray", gray8)
        (report,) = eval_json([paths[0].parent, "--reference", paths[0]], capsys)
        result = efusion.exposure_fusion(as_codes(gray8))
        gray_stack = torch.from_numpy(gray8).permute(0, 3, 1, 2).double()
        expected = mef_ssim(result.double().clamp(0, 1) * 255, gray_stack, data_range=255).item()
        assert by_image(report)["efusion"]["mef_ssim"] == pytest.approx(expected, abs=1e-12)
        assert by_image(report)["efusion"]["ssim"] < 1

    def test_folders_are_brackets_and_a_bad_one_is_skipped(self, tmp_path, capsys, frames8):
        write_frames(tmp_path / "alpha", frames8)
        write_frames(tmp_path / "beta", make_frames(seed=2))
        write_frames(tmp_path / "gamma", frames8[:1])  # one frame: cannot be scored
        folders = [tmp_path / name for name in ("alpha", "gamma", "beta")]
        code, stdout, err = run(["eval", *folders, "--json"], capsys)
        assert code == 1
        assert_one_error_line(err, str(tmp_path / "gamma"), "at least 2 frames")
        reports = [json.loads(line) for line in stdout.splitlines()]
        assert [r["bracket"] for r in reports] == [str(tmp_path / "alpha"), str(tmp_path / "beta")]
        code, stdout, _ = run(["eval", *folders], capsys)
        assert code == 1
        assert [line.split()[0] for line in stdout.splitlines()[1:3]] == [str(tmp_path / "alpha"), str(tmp_path / "beta")]


# ----------------------------------------------------------------------------------------------
# Bad input: one line naming the file, a non-zero exit, nothing on stdout


class TestEvalBadInput:
    def check(self, capsys, argv, *needles: str, code: int = 1) -> None:
        status, stdout, err = run(["eval", *argv], capsys)
        assert status == code, (status, err)
        assert_one_error_line(err, *needles)
        assert stdout == ""

    def test_missing_frame(self, tmp_path, capsys, bracket):
        self.check(capsys, [bracket[0], tmp_path / "nope.png"], "nope.png", "no such file")

    def test_missing_folder(self, tmp_path, capsys):
        self.check(capsys, [tmp_path / "shoot"], "shoot", "no such file")

    def test_missing_fused(self, tmp_path, capsys, bracket):
        self.check(capsys, [bracket[0].parent, "--fused", tmp_path / "fused.png"], "fused.png", "no such file")

    def test_missing_reference(self, tmp_path, capsys, bracket):
        self.check(capsys, [bracket[0].parent, "--reference", tmp_path / "truth.tif"], "truth.tif", "no such file")

    def test_fused_of_another_size(self, tmp_path, capsys, bracket, frames8):
        Image.fromarray(frames8[0, :44, :60]).save(tmp_path / "fused.png")
        self.check(capsys, [bracket[0].parent, "--fused", tmp_path / "fused.png"],
                   str(tmp_path / "fused.png"), "--fused image is 60x44", "frames are 64x48")

    def test_reference_of_another_size(self, tmp_path, capsys, bracket, frames8):
        Image.fromarray(frames8[0, :, :60]).save(tmp_path / "truth.png")
        self.check(capsys, [bracket[0].parent, "--reference", tmp_path / "truth.png"],
                   str(tmp_path / "truth.png"), "--reference image is 60x48", "frames are 64x48")

    def test_frames_too_small(self, tmp_path, capsys):
        paths = write_frames(tmp_path / "tiny", make_frames(40, 64))
        self.check(capsys, [paths[0].parent], str(paths[0].parent), "64x40", "at least 44 pixels")

    def test_frames_of_different_sizes(self, tmp_path, capsys, bracket, frames8):
        Image.fromarray(frames8[2, :, :50]).save(bracket[2])
        self.check(capsys, [bracket[0].parent], str(bracket[2]), "50x48", "64x48")

    def test_one_frame(self, tmp_path, capsys, bracket):
        self.check(capsys, [bracket[0]], str(bracket[0]), "one frame", "at least 2 frames")
        folder = tmp_path / "single"
        write_frames(folder, make_frames(n=1))
        self.check(capsys, [folder], str(folder), "holds one frame", "at least 2 frames")

    def test_empty_folder(self, tmp_path, capsys):
        (tmp_path / "empty").mkdir()
        self.check(capsys, [tmp_path / "empty"], "empty", "no image files")

    def test_nan_in_float_fused(self, tmp_path, capsys, bracket):
        image = np.full((48, 64, 3), 0.5, np.float32)
        image[3, 4, 1] = np.nan
        tifffile.imwrite(tmp_path / "fused.tif", image, photometric="rgb")
        self.check(capsys, [bracket[0].parent, "--fused", tmp_path / "fused.tif"], "fused.tif", "NaN")

    @pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
    @pytest.mark.parametrize("json_lines", [[], ["--json"]])
    def test_non_finite_float_frame(self, tmp_path, capsys, frames8, bad, json_lines):
        # the fusion takes float frames as they are: one such sample makes the scores NaN
        frames = as_stack(frames8).permute(0, 2, 3, 1).numpy().copy()
        frames[2, 5, 6, 0] = bad
        for i, frame in enumerate(frames):
            tifffile.imwrite(tmp_path / f"{i}.tif", frame, photometric="rgb")
        self.check(capsys, [tmp_path, *json_lines], "2.tif", "NaN or infinite")

    def test_bad_parameter(self, tmp_path, capsys, bracket):
        self.check(capsys, [bracket[0].parent, "--sigma", "-0.1"], "'sigma' must be > 0", code=2)
        (tmp_path / "p.json").write_text('{"gama": 2}')
        self.check(capsys, [bracket[0].parent, "--params", tmp_path / "p.json"], "p.json", "'gama'")

    def test_fusion_failure_names_the_bracket(self, capsys, bracket, monkeypatch):
        def out_of_memory(*args, **kwargs):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")

        monkeypatch.setattr(efusion, "exposure_fusion", out_of_memory)
        self.check(capsys, [bracket[0].parent], str(bracket[0].parent), "out of memory")

    def test_usage_errors_exit_2(self, tmp_path, capsys, bracket, frames8):
        other = write_frames(tmp_path / "other", frames8)[0].parent
        self.check(capsys, [bracket[0].parent, bracket[1]], "is a folder", "frame files of one bracket", code=2)
        self.check(capsys, [bracket[0].parent, other, "--fused", bracket[0]], "--fused belongs to one bracket", "2 folders", code=2)
        self.check(capsys, [bracket[0].parent, other, "--reference", bracket[0]], "--reference", code=2)
        self.check(capsys, [bracket[0].parent, "--fused-only"], "--fused-only needs --fused", code=2)
        status, _, err = run(["eval"], capsys)
        assert status == 2 and err.startswith("efusion eval: error: ") and len(err.strip().splitlines()) == 1


def test_help_reads_well(capsys):
    code, stdout, _ = run(["--help"], capsys)
    assert code == 0 and "eval" in stdout and "efusion eval bracket/" in stdout
    code, stdout, _ = run(["eval", "--help"], capsys)
    assert code == 0
    for text in ("--fused", "--fused-only", "--baselines", "--reference", "--json", "--contrast", "--saturation",
                 "--exposure", "--mu", "--sigma", "--levels", "--preset", "--params", "--device", "--dtype",
                 "Ma, Zeng & Wang", "rgb2gray", "on luma", "2004", "examples:", "mef_ssim_single_scale"):
        assert text in stdout, text


# ----------------------------------------------------------------------------------------------
# Real burst against the authors' MATLAB scores (../shared/reference/mef_ssim.tsv)


@requires_shared(REFERENCE / "mef_ssim.tsv")
def test_set_scores_match_the_reference_table(tmp_path, capsys):
    """Mertens' own result as a float TIFF scores as in the table (float: gray not rounded, per
    MEF_SSIM_README.md); the mean and best-frame baselines reproduce the table's other two rows."""
    folder = BURSTS / "mef_ma" / "Set"
    with open(REFERENCE / "mef_ssim.tsv", newline="") as handle:
        rows = {row["fused"]: row for row in csv.DictReader(handle, delimiter="\t") if row["burst"] == "mef_ma_Set"}
    mertens = tmp_path / "mertens.tif"
    tifffile.imwrite(mertens, np.load(REFERENCE / "mertens" / "mef_ma_Set.npy"), photometric="rgb")
    assert tifffile.imread(mertens).dtype == np.float32

    code, stdout, err = run(["eval", folder, "--fused", mertens, "--baselines", "--device", "cpu"], capsys)
    assert code == 0, err
    printed = {}  # last word of the image column -> (multi-scale, single-scale) as printed
    for line in stdout.splitlines()[1:5]:
        cells = line.split()
        printed[cells[-3]] = (float(cells[-2]), float(cells[-1]))
    best = next(name for name in rows if name.startswith("frame:"))
    checks = {"mertens": printed[str(mertens)], "mean": printed["frames"], best: printed[best[len("frame:"):]]}
    for name, (multi, single) in checks.items():
        assert abs(multi - float(rows[name]["ms_score"])) <= 0.002, (name, multi, rows[name])
        assert abs(single - float(rows[name]["ss_score"])) <= 0.002, (name, single, rows[name])
    # achieved: every printed digit (6 decimals) agrees
    assert abs(checks["mertens"][0] - float(rows["mertens"]["ms_score"])) <= 2e-6
