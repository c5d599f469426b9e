from __future__ import annotations

from pathlib import Path

import numpy as np
from click.testing import CliRunner
from PIL import Image

from minisgl.cli import cli


def test_minisgl_image_writes_pngs_and_prints_their_paths(tiny_image_pipeline: Path, tmp_path: Path):
    out = tmp_path / "out"
    args = ["image", "-p", "a red fox", "--model", str(tiny_image_pipeline), "--width", "32", "--height", "24",
            "--steps", "2", "--num-images", "2", "--seed", "5", "--device", "cpu", "-o", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    paths = [Path(line) for line in result.stdout.splitlines() if line.endswith(".png")]
    assert len(paths) == 2 and all(p.parent == out for p in paths)
    assert "seed5" in paths[0].name and "seed6" in paths[1].name
    images = [Image.open(p) for p in paths]
    assert [im.size for im in images] == [(32, 24), (32, 24)]
    assert not np.array_equal(np.asarray(images[0]), np.asarray(images[1]))


def test_minisgl_image_reports_a_bad_model_dir(tmp_path: Path):
    result = CliRunner().invoke(cli, ["image", "--model", str(tmp_path / "missing"), "--device", "cpu",
                                      "-o", str(tmp_path / "out")])
    assert result.exit_code != 0
    assert "model_index.json" in result.output
