"""The lab as people use it: run configurations refused with the field and the
reason, overrides that narrow a sweep, the command line's options and output,
and a user's own model and data set run through the experiments and the report."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import TINY
from rich.console import Console
from typer.testing import CliRunner

import normlab.cli as cli
from normlab import experiments as E
from normlab.cli import app
from normlab.experiments import ConfigError, RunConfig

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def flat(output: str) -> str:
    return " ".join(output.split())


def stored(root) -> pd.DataFrame:
    return E.ResultsStore(root).summaries()


# ------------------------------------------------------------------ configuration


def test_run_config_is_frozen_and_typed():
    with pytest.raises(Exception, match="frozen"):
        TINY.steps = 5
    for field, value, reason in (
        ("monitor", 2, "monitor: Input should be a valid boolean, got 2"),
        ("lr_scaling", "yes", "lr_scaling: Input should be a valid boolean"),
        ("steps", 2.5, "steps: Input should be a valid integer, got 2.5"),
        ("channels", (), "channels: Tuple should have at least 1 item"),
        ("lr", float("nan"), "lr: Input should be a finite number"),
        ("activation", "rleu", "activation: Input should be 'sigmoid', 'tanh', 'relu'"),
    ):
        with pytest.raises(ConfigError, match=reason):
            TINY.replace(**{field: value})


def test_eval_every_none_means_only_at_the_end():
    result = E.run(TINY.replace(eval_every=None, monitor=False))
    acc = result.metrics[result.metrics.metric == "test_acc"]
    assert list(acc.step) == [TINY.steps]
    assert "10**9" not in json.dumps(E.get("lr").base.to_dict())


def test_an_invalid_set_value_is_refused_before_training(tmp_path):
    result = invoke("run", "init", "--quick", "--set", "monitor=2", "--out", tmp_path)
    assert result.exit_code == 2
    assert "monitor: Input should be a valid boolean, got 2" in flat(result.output)
    assert not (tmp_path / "init" / "runs").exists() or not list(
        (tmp_path / "init" / "runs").iterdir()
    )
    bad = invoke("run", "init", "--set", "stpes=3", "--out", tmp_path)
    assert bad.exit_code == 2 and "did you mean steps" in flat(bad.output)


def test_an_override_of_a_swept_field_narrows_the_sweep(tmp_path):
    result = invoke(
        "run",
        "lr",
        "--quick",
        "--jobs",
        "1",
        "--norms",
        "none",
        "--set",
        "lr=0.05",
        "--out",
        tmp_path,
    )
    assert result.exit_code == 0, result.output
    assert set(stored(tmp_path / "lr").lr) == {0.05}
    assert "lr: 1 runs" in flat(result.output)


def test_seed_override_is_refused_with_the_reason():
    with pytest.raises(ConfigError, match="use --seeds"):
        E.get("lr").sweep(quick=True, overrides={"seed": 3})


def test_a_config_the_analysis_cannot_use_is_refused_before_training(tmp_path):
    result = invoke(
        "run", "ics", "--quick", "--jobs", "1", "--set", "activation=relu", "--out", tmp_path
    )
    assert result.exit_code == 2
    assert "ics: follows a sigmoid or tanh input; activation='relu' has none" in flat(result.output)
    assert stored(tmp_path / "ics").empty if (tmp_path / "ics").exists() else True
    ok = invoke("run", "ics", "--quick", "--jobs", "1", "--norms", "none", "--out", tmp_path)
    assert ok.exit_code == 0, ok.output  # the results directory stays usable


def test_a_run_non_finite_from_the_first_step_is_stored_as_diverged(tmp_path):
    result = invoke(
        "run",
        "lr",
        "--quick",
        "--jobs",
        "1",
        "--norms",
        "batchnorm",
        "--dataset",
        "lab_plugin:load_nan",
        "--out",
        tmp_path,
    )
    assert result.exit_code == 0, result.output
    table = stored(tmp_path / "lr")
    assert len(table) == 2 and table.diverged.all() and (table.steps_done == 1).all()
    headline = pd.read_csv(tmp_path / "lr" / "headline.csv")
    assert (headline.diverged == 1).all()


# ------------------------------------------------------------------ command line


def test_norms_comma_separated_repeated_and_canonicalized(tmp_path):
    result = invoke(
        "run",
        "cost",
        "--quick",
        "--jobs",
        "1",
        "--norms",
        "bn,batchnorm",
        "--norms",
        "GN",
        "--norms",
        "identity",
        "--out",
        tmp_path,
    )
    assert result.exit_code == 0, result.output
    assert sorted(stored(tmp_path / "cost").norm) == ["batchnorm", "groupnorm", "none"]


def test_help_shows_every_literal_and_the_version():
    help_text = flat(invoke("run", "--help").output)
    assert "pip install 'normlab[ray]'" in help_text
    assert "[default: local]" in help_text and "[default: normlab-results]" in help_text
    for name in E.EXPERIMENTS:  # listed from the experiments' homes
        assert name in help_text
    version = invoke("--version")
    assert version.exit_code == 0 and version.output.startswith("normlab 0.")


def test_progress_is_one_plain_line_per_run_when_not_a_terminal(tmp_path):
    result = invoke("run", "init", "--quick", "--jobs", "1", "--norms", "bn", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("[")]
    assert len(lines) == 2 and lines[0].startswith("[1/2] init batchnorm init_scale=0.1 seed=0: ")
    assert " s, test acc 0." in lines[1]


def test_list_fits_80_columns_and_never_cuts_a_paper(monkeypatch):
    monkeypatch.setattr(cli, "console", Console(width=80))
    result = invoke("list")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert max(len(line) for line in lines) <= 80 and "…" not in result.output
    cells = [line.split("│")[-2] for line in lines if "│" in line]
    column = "".join(cell.replace(" ", "") for cell in cells)
    words = {word for cell in cells for word in cell.split()}
    for name in cli.available():  # every paper is there, in order, no word broken
        paper = cli.spec(name).paper
        assert paper.replace(" ", "") in column and set(paper.split()) <= words, name
    monkeypatch.undo()
    wide = invoke("list", "--wide")
    assert "BatchNormNd" in wide.output and "weight, bias" in wide.output


@pytest.mark.parametrize("kind", ["file", "under-a-file", "proc"])
def test_an_unusable_out_is_one_clear_line(tmp_path, kind):
    target = {
        "file": tmp_path / "f",
        "under-a-file": tmp_path / "f" / "sub",
        "proc": "/proc/normlab-results",
    }[kind]
    (tmp_path / "f").write_text("not a directory")
    result = invoke("run", "init", "--quick", "--jobs", "1", "--out", target)
    assert result.exit_code != 0
    assert "Traceback" not in result.output and "normlab: error:" in result.output


# ------------------------------------------------------------------ your model and data


def test_your_model_and_data_run_through_the_experiments_and_the_report(tmp_path):
    result = invoke(
        "compare",
        "--quick",
        "--jobs",
        "1",
        "--experiments",
        "lr",
        "--experiments",
        "cost",
        "--model",
        "lab_plugin:build",
        "--dataset",
        "lab_plugin:load",
        "--norms",
        "batchnorm,layernorm",
        "--out",
        tmp_path,
    )
    assert result.exit_code == 0, result.output
    table = stored(tmp_path / "results" / "lr")
    assert set(table.model) == {"lab_plugin:build"} and set(table.dataset) == {"lab_plugin:load"}
    assert table.final_test_acc.max() > 0.8  # two well-separated blobs: it learns
    page = (tmp_path / "index.html").read_text()
    assert ">Learning rate<" in page and ">Cost<" in page


def test_a_bad_plugin_is_refused_with_the_reason():
    with pytest.raises(ConfigError, match="model: cannot import 'no_such_module'"):
        TINY.replace(model="no_such_module:build")
    with pytest.raises(ConfigError, match="dataset: module 'lab_plugin' has no attribute 'nope'"):
        TINY.replace(dataset="lab_plugin:nope")
    with pytest.raises(ConfigError, match="is not callable"):
        TINY.replace(dataset="lab_plugin:NOT_CALLABLE")


# ------------------------------------------------------------------ one home per experiment


def test_every_experiment_is_one_module_of_the_suite():
    import pkgutil

    from normlab.experiments import suite
    from normlab.experiments.experiment import Experiment

    modules = {m.name for m in pkgutil.iter_modules(suite.__path__)}
    assert {e.name.replace("-", "_") for e in E.EXPERIMENTS.values()} == modules
    for experiment in E.EXPERIMENTS.values():
        assert isinstance(experiment, Experiment)
        assert experiment.sweep(quick=True).configs()
    assert set(cli.catalog.SUITE) <= set(E.EXPERIMENTS)
    assert RunConfig.model_fields.keys() >= {"model", "dataset", "eval_every"}


def test_a_second_sweep_on_the_same_out_is_told_clearly(tmp_path):
    from filelock import FileLock

    (tmp_path / "init").mkdir()
    with FileLock(tmp_path / "init" / ".lock"):
        result = invoke("run", "init", "--quick", "--jobs", "1", "--out", tmp_path)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "another sweep is writing to the results store" in flat(result.output)


# ------------------------------------------------------------------ what a sceptical user tried


def test_analyses_read_the_current_sweep_not_every_run_ever_stored(tmp_path):
    for extra in ([], ["--set", "steps=3"]):
        result = invoke(
            "run", "init", "--quick", "--jobs", "1", "--norms", "none", "--out", tmp_path, *extra
        )
        assert result.exit_code == 0, result.output
    headline = pd.read_csv(tmp_path / "init" / "headline.csv")
    assert (headline.seeds == 1).all()
    store = E.ResultsStore(tmp_path / "init")
    assert len(store.summaries()) == 2 and len(store.summaries(everything=True)) == 4
    assert set(store.summaries().steps) == {3}


def test_a_diverged_ics_run_still_reports(tmp_path):
    args = ["run", "ics", "--quick", "--jobs", "1", "--norms", "batchnorm", "--out", tmp_path]
    result = invoke(*args, "--set", "init_scale=1e300", "--set", "steps=3")
    assert result.exit_code == 0, result.output
    assert stored(tmp_path / "ics").diverged.all()
    report = invoke("report", tmp_path / "ics")  # an experiment's directory is accepted too
    assert report.exit_code == 0, report.output
    assert (tmp_path / "report" / "index.html").is_file()


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["init", "--norms", "lrn"],
            "norm=lrn model=mlp dataset=mnist: cannot run (NormInputError",
        ),
        (["init", "--set", "batch_size=5000"], "batch_size: 5000 examples per step"),
        (["cost", "--set", "dataset=cifar10"], "dataset=cifar10: cannot run (DataFileError"),
        (
            ["init", "--model", "lab_plugin:build"],
            "init sweeps init_scale, which your model builder",
        ),
        (["lr", "--norms", ""], "--norms: no technique named"),
        (["lr", "--norms", "bn", "--set", "norm=gn"], "norm: given twice"),
    ],
)
def test_what_cannot_train_is_refused_before_training(tmp_path, args, message):
    result = invoke("run", *args, "--quick", "--jobs", "1", "--out", tmp_path)
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert message in flat(result.output)
    assert stored(tmp_path / args[0]).empty if (tmp_path / args[0] / "runs").is_dir() else True


def test_a_run_that_fails_while_training_is_one_line_and_loses_nothing(tmp_path):
    result = invoke(
        "run",
        "lr",
        "--quick",
        "--jobs",
        "1",
        "--norms",
        "none",
        "--model",
        "lab_plugin:build_fails_while_training",
        "--dataset",
        "lab_plugin:load",
        "--out",
        tmp_path,
    )
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "lr: a run failed (RuntimeError: boom at the third training step)" in flat(result.output)


def test_a_step_count_asked_for_replaces_the_epochs(tmp_path):
    result = invoke(
        "run",
        "lr",
        "--quick",
        "--jobs",
        "1",
        "--norms",
        "none",
        "--set",
        "lr=0.1",
        "--set",
        "steps=2",
        "--out",
        tmp_path,
    )
    assert result.exit_code == 0, result.output
    assert list(stored(tmp_path / "lr").steps_done) == [2]


def test_an_empty_json_record_counts_as_unfinished(tmp_path):
    sweep = E.get("init").sweep(["none"], quick=True)
    store = E.run_sweep(sweep, tmp_path, E.LocalExecutor(1))
    victim = store.runs / store.ids()[0]
    (victim / "summary.json").write_text("{}")
    with pytest.warns(UserWarning, match="summary.json does not read back"):
        assert len(store.ids()) == len(sweep.configs()) - 1


def test_aliases_that_build_the_same_layer_count_once():
    from normlab.experiments.experiment import canonical_norms

    assert canonical_norms(["sync_bn", "syncbatchnorm", "ln2d", "layernorm2d", "BN"]) == (
        "syncbatchnorm",
        "layernorm2d",
        "batchnorm",
    )


# --- issue 25: a plugin never trains silently on something else --------------------------


@pytest.mark.parametrize(
    ("builder", "shape"),
    [("lab_plugin:build_wrong_width", r"\(2, 5\)"), ("lab_plugin:build_flat", r"\(2,\)")],
)
def test_a_builder_whose_output_is_not_logits_is_refused_before_training(builder, shape):
    from normlab.experiments.runner import preflight

    config = E.RunConfig(model=builder, dataset="lab_plugin:load", norm="none", steps=2)
    with pytest.raises(ConfigError, match=rf"{builder}.*{shape}.*\(2, 2\)"):
        preflight([config])


def test_editing_a_plugin_changes_the_run_id(tmp_path, monkeypatch):
    """The run id hashes the plugin's code, not only its name: an edited builder is a new
    run, not 'already done'."""
    (tmp_path / "my_plugin.py").write_text(
        "from torch import nn\n"
        "def build(norm, input_shape, num_classes):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(6, num_classes))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    first = E.RunConfig(model="my_plugin:build", dataset="lab_plugin:load").run_id
    (tmp_path / "my_plugin.py").write_text(
        "from torch import nn\n"
        "def build(norm, input_shape, num_classes):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, num_classes))\n"
    )
    assert E.RunConfig(model="my_plugin:build", dataset="lab_plugin:load").run_id != first


def test_a_loader_is_held_to_the_sizes_asked_and_to_class_labels():
    from normlab.experiments import plugins

    data = plugins.load_dataset("lab_plugin:load_everything", 0, 32, 16)
    assert (len(data.train_x), len(data.test_x)) == (32, 16)
    with pytest.raises(ValueError, match=r"load_float_labels.*class indices.*\d\.5"):
        plugins.load_dataset("lab_plugin:load_float_labels", 0, None, None)


def test_a_damaged_run_is_warned_once_per_command(tmp_path):
    """The plan and the sweep both read the store; the user reads the warning once."""
    args = ("run", "init", "--quick", "--norms", "none", "--seeds", "1", "--jobs", "1")
    assert invoke(*args, "--out", tmp_path).exit_code == 0
    victim = sorted((tmp_path / "init" / "runs").iterdir())[0]
    (victim / "summary.json").write_text('{"final_test_acc": "abc"}')
    result = invoke(*args, "--out", tmp_path)
    assert result.exit_code == 0, result.output
    assert flat(result.output).count(f"run {victim.name} counts as unfinished") == 1, result.output
