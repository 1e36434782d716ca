"""The normlab command: list and check, as a user runs them."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from normlab.cli import app
from normlab.norms.registry import available, get_spec

runner = CliRunner()


def test_list_shows_every_technique_with_its_axes():
    result = runner.invoke(app, ["list"])
    assert result.exit_code == 0, result.output
    for name in available():
        assert name in result.output
    assert "N, H, W" in result.output  # batch norm's statistic
    assert "C/G, H, W" in result.output  # group norm's


def test_registry_axes_follow_the_papers():
    assert get_spec("batchnorm").axes == "N, H, W"
    assert get_spec("LayerNorm").axes == "C, H, W"
    assert get_spec("instance_norm").axes == "H, W"
    assert get_spec("groupnorm").batch_dependent is False
    assert get_spec("batchnorm").batch_dependent is True


def test_unknown_technique_suggests_close_names():
    with pytest.raises(KeyError, match="did you mean batchnorm"):
        get_spec("batchnrom")


def test_check_passes_and_prints_a_table():
    result = runner.invoke(app, ["check", "--dtype", "float64"])
    assert result.exit_code == 0, result.output
    assert "BatchNorm2d(16)" in result.output and "reference" in result.output
    assert "all 16 checks within tolerance" in result.output


def test_check_rejects_an_unknown_dtype():
    result = runner.invoke(app, ["check", "--dtype", "int8"])
    assert result.exit_code == 2
    assert "unknown dtype 'int8'" in result.output
