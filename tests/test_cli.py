"""The normlab command: list and check, as a user runs them."""

from __future__ import annotations

from typer.testing import CliRunner

from normlab.cli import app
from normlab.norms.forms import form, forms
from normlab.norms.registry import available

runner = CliRunner()


def test_list_shows_every_technique_with_its_axes():
    result = runner.invoke(app, ["list"])
    assert result.exit_code == 0, result.output
    for name in available():
        assert name in result.output
    assert "N, H, W" in result.output  # batch norm's statistic
    assert "C/G, H, W" in result.output  # group norm's
    assert "N/v, H, W" in result.output  # ghost batch norm's
    for name in forms():  # the block-level forms, in a table of their own, calls as written
        assert name in result.output and form(name).cls.__name__ in result.output
        assert all(word in result.output for word in form(name).call.split())


def test_check_passes_and_prints_a_table():
    result = runner.invoke(app, ["check", "--dtype", "float64"])
    assert result.exit_code == 0, result.output
    assert "BatchNorm2d(16)" in result.output and "reference" in result.output
    assert "all 16 checks within tolerance" in result.output


def test_check_rejects_an_unknown_dtype():
    result = runner.invoke(app, ["check", "--dtype", "int8"])
    assert result.exit_code == 2
    assert "'int8' is not one of 'float32', 'float64', 'bfloat16'" in result.output


def test_list_costs_names_what_the_json_lacks(tmp_path):
    """A costs file that is not benchmarks/cpu_norms.py's JSON says what it wants."""
    cases = {
        "norows.json": ('{"techniques": []}', 'no "rows" list'),
        "rowkeys.json": ('{"rows": [{"name": "bn"}]}', 'row 0 lacks "technique"'),
        "notdict.json": ("[1, 2]", 'no "rows" list'),
        "cost.json": ('{"rows": [{"technique": "bn", "cost_vs_batchnorm": "x"}]}', "not a number"),
        "bad.json": ("{", "not JSON"),
    }
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        result = CliRunner(env={"COLUMNS": "300"}).invoke(
            app, ["list", "--costs", str(tmp_path / name)]
        )
        flat = " ".join(result.output.replace("│", " ").split())
        assert result.exit_code == 2 and message in flat and name in flat, flat
        assert "benchmarks/cpu_norms.py" in flat, flat
