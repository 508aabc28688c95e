"""efusion.cli.parser: option values parsed once, with messages that name the option and the value."""
from __future__ import annotations

import pytest

from efusion.cli import build_parser

from _cli_helpers import run


def parse(*argv):
    return build_parser().parse_args(["fuse", "a.png", "-o", "out.png", *argv])


@pytest.mark.parametrize("text, pixels", [("768", 768), ("250M", 250_000_000), ("3m", 3_000_000)])
def test_pixel_counts(text, pixels):
    assert parse("--max-pixels", text).max_pixels == pixels


@pytest.mark.parametrize(
    "option, text, message",
    [
        ("--max-pixels", "lots", "expected a whole number of pixels (e.g. 250000000 or 250M), got 'lots'"),
        ("--max-pixels", "0M", "expected a number of pixels >= 1, got 0M"),
        ("--threads", "2M", "expected a whole number, got '2M'"),  # millions are for pixel counts only
        ("--threads", "0", "expected a number >= 1, got 0"),
    ],
)
def test_whole_number_messages(capsys, option, text, message):
    code, _, err = run(["fuse", "a.png", "-o", "out.png", option, text], capsys)
    assert code == 2
    assert err.strip() == f"efusion fuse: error: argument {option}: {message} (see 'efusion fuse --help')"


def test_per_channel_values():
    args = parse("--mu", "0.4,0.5,0.6", "--sigma", "0.2")
    assert args.mu == [0.4, 0.5, 0.6] and args.sigma == 0.2


def test_choices_come_from_the_io_tables():
    from efusion.io import OUTPUT_FORMATS
    from efusion.io.display import RANGES

    for name in OUTPUT_FORMATS:
        assert parse("--format", name).format == name
    for mode in RANGES:
        assert parse("--range", mode).range == mode
