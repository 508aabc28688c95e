"""``efusion eval`` with several ``--fused`` images, and a folder of results matched to the brackets by name (issue 16)."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

import efusion

from _cli_helpers import assert_one_error_line, run
from _image_files import write_frames

# ----------------------------------------------------------------------------------------------
# issue 16 item 5: several --fused, and a folder of results matched to the brackets by name


def eval_reports(argv, capsys) -> tuple[int, list[dict], str]:
    import json

    code, stdout, err = run(["eval", *argv, "--json"], capsys)
    return code, [json.loads(line) for line in stdout.splitlines()], err


@pytest.fixture
def shoot(tmp_path):
    """Two 48x64 brackets shoot/a, shoot/b and results of other fusions: results/a.png, results/b.jpg."""
    from efusion import synthetic

    folders, results = [], tmp_path / "results"
    results.mkdir()
    for seed, name, suffix in ((1, "a", ".png"), (2, "b", ".jpg")):
        stack = synthetic.bracket(48, 64, 3, seed=seed)
        frames = (stack * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        folders.append(write_frames(tmp_path / "shoot" / name, frames)[0].parent)
        fused = efusion.exposure_fusion(stack, contrast=0.5).clamp(0, 1)
        Image.fromarray((fused * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()).save(results / f"{name}{suffix}")
    return folders, results


def test_several_fused_images_one_row_each(capsys, shoot):
    (a, _), results = shoot
    other = a / "2.png"  # a frame of the bracket as a second "fusion"
    code, (report,), err = eval_reports([a, "--fused", results / "a.png", "--fused", other], capsys)
    assert code == 0, err
    fused = [r for r in report["results"] if r["image"] == "fused"]
    assert [r["path"] for r in fused] == [str(results / "a.png"), str(other)]
    for row, path in zip(fused, (results / "a.png", other)):  # each as scored alone
        _, (alone,), _ = eval_reports([a, "--fused", path, "--fused-only"], capsys)
        assert alone["results"][0]["mef_ssim"] == row["mef_ssim"]
    assert fused[0]["mef_ssim"] != fused[1]["mef_ssim"]
    code, stdout, _ = run(["eval", a, "--fused", results / "a.png", "--fused", other], capsys)
    assert code == 0 and str(results / "a.png") in stdout and str(other) in stdout  # the table has both rows


def test_folder_of_results_is_matched_by_bracket_name(capsys, shoot):
    folders, results = shoot
    code, reports, err = eval_reports([*folders, "--fused", results, "--fused-only"], capsys)
    assert code == 0, err
    assert [r["results"][0]["path"] for r in reports] == [str(results / "a.png"), str(results / "b.jpg")]
    for folder, report in zip(folders, reports):
        _, (alone,), _ = eval_reports([folder, "--fused", report["results"][0]["path"], "--fused-only"], capsys)
        assert alone["results"] == report["results"]


def test_folder_of_results_without_a_bracket_is_reported_and_the_rest_scored(capsys, shoot):
    folders, results = shoot
    (results / "b.jpg").unlink()
    code, reports, err = eval_reports([*folders, "--fused", results], capsys)
    assert code == 1
    assert [r["bracket"] for r in reports] == [str(folders[0])]
    assert_one_error_line(err, str(results), "'b'")


def test_one_fused_file_with_several_brackets_is_a_usage_error(capsys, shoot):
    folders, results = shoot
    code, _, err = run(["eval", *folders, "--fused", results / "a.png"], capsys)
    assert code == 2
    assert_one_error_line(err, "--fused", "folder of results")
