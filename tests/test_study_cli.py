"""Bad study input: one line naming the problem, exit status 2, and Ray never started."""

from __future__ import annotations

import importlib
import json
import math
import os

import pytest

import tunegap.runner.run as run_module
from tunegap.study import Study, StudyError

CASES = [
    ("ghost_size", ["--seeds", "0"], "--seeds"),
    ("ghost_size", ["--seeds", "two"], "--seeds"),
    ("ghost_size", ["--batch-sizes", "0,512"], "--batch-sizes"),
    ("ghost_size", ["--batch-sizes", "big"], "--batch-sizes"),
    ("ghost_size", ["--ghost-sizes", "-32"], "--ghost-sizes"),
    ("ghost_size", ["--ghost-sizes", "tiny"], "--ghost-sizes"),
    ("ghost_size", ["--batch-sizes", "64,128", "--ghost-sizes", "256,512"], "every ghost batch size"),
    ("ghost_size", ["--lr-exponent", "-1"], "lr_exponent"),
    ("ghost_size", ["--workload", "imagenet-vit"], "unknown workload 'imagenet-vit'"),
    ("ghost_size", ["--search", "optuna"], "--search"),
    ("ghost_size", ["--epochs", "0"], "--epochs"),
    ("ghost_size", ["--margin", "-1"], "--margin"),
    ("ghost_size", ["--margin", "nan"], "--margin"),
    ("ghost_size", ["--margin", "inf"], "--margin"),
    ("ghost_size", ["--margin", "half"], "--margin"),
    ("ghost_size", ["--tolerance", "1"], "unrecognized arguments: --tolerance"),
    ("ghost_size", ["--accuracy", "median"], "--accuracy"),
    ("ghost_size", ["--max-concurrent", "0"], "--max-concurrent"),
    ("ghost_size", ["--gpus-per-trial", "-0.5"], "--gpus-per-trial"),
    ("ghost_size", ["--gpus-per-trial", "1.5"], "--gpus-per-trial 1.5"),
    # No CUDA here, or (on a GPU machine) 0 GPUs per trial for the CPU-sized default workload.
    ("ghost_size", ["--device", "cuda"], "--device cuda "),
    ("ghost_size", ["--device", "tpu"], "--device"),
    ("ghost_size", ["--checkpoint-every", "0"], "--checkpoint-every"),
    ("ghost_size", ["--tracking-uri", "http://127.0.0.1:9"], "127.0.0.1:9"),
    ("ghost_size", ["--no-such-flag"], "unrecognized arguments"),
    ("regime_length", ["--multipliers", "0,2"], "--multipliers"),
    ("regime_length", ["--multipliers", "longer"], "--multipliers"),
    ("regime_length", ["--batch-size", "-4"], "--batch-size -4"),
    ("lr_scaling", ["--exponents", "0.5,-1"], "--exponents"),
    ("lr_scaling", ["--search", "optuna", "--seeds", "3"], "--seeds with --search optuna"),
    ("lr_scaling", ["--search", "random"], "--search"),
    ("lr_scaling", ["--num-samples", "0", "--search", "optuna"], "--num-samples"),
    ("batch_size", ["--batch-sizes", "32,-64"], "--batch-sizes"),
    ("table1", ["--large-batch-size", "0"], "--large-batch-size 0"),
    ("diffusion", ["--exponents", "inf"], "--exponents"),
    ("ghost_size", ["--margin", "200"], "--margin 200"),
    ("ghost_size", ["--batch-sizes", "512,512"], "repeats 512"),
    ("regime_length", ["--multipliers", "1e9"], "at most 100000"),
    ("ghost_size", ["--epochs", "100001"], "--epochs 100001"),
    ("ghost_size", ["--seeds", "100000"], "--seeds 100000"),
    ("ghost_size", ["--seeds", "auto", "--max-seeds", "5000"], "--max-seeds 5000"),
    ("ghost_size", ["--batch-sizes", "512,16384"], "batch size 16384"),
    ("ghost_size", ["--tracking-uri", ""], "--tracking-uri '' is empty"),
    ("ghost_size", ["--data-dir", ""], "--data-dir '' is empty"),
    ("ghost_size", ["--data-dir", "{tmp}/notes.txt"], "is a file"),
    ("ghost_size", ["--address", "127.0.0.1:1"], "--address 127.0.0.1:1"),
    ("ghost_size", ["--workload", "cifar10-resnet44", "--data-dir", "{tmp}/empty"], "CIFAR-10"),
    ("ghost_size", ["--workload", "mnist-f1", "--data-dir", "{tmp}/empty"], "MNIST"),
    ("ghost_size", ["--tracking-uri", "sqlite:///{tmp}/notes.txt"], "not an SQLite database"),
    ("ghost_size", ["--tracking-uri", "sqlite:///{tmp}/empty"], "is a folder"),
    ("ghost_size", ["--tracking-uri", "sqlite:////proc/tunegap-test.db"], "/proc/tunegap-test.db"),
    ("ghost_size", ["--tracking-uri", "http://user:secret@127.0.0.1:9"], "127.0.0.1:9"),
    # The training knobs (issue 13), on a study's command line.
    ("ghost_size", ["--optimizer", "rmsprop"], "--optimizer"),
    ("ghost_size", ["--momentum", "1"], "momentum 1.0"),
    ("ghost_size", ["--weight-decay", "-0.1"], "weight_decay -0.1"),
    ("ghost_size", ["--warmup-epochs", "nan"], "warmup_epochs nan"),
    ("ghost_size", ["--schedule", "onecycle"], "--schedule"),
    ("ghost_size", ["--label-smoothing", "1.5"], "label_smoothing 1.5"),
    ("ghost_size", ["--train-size", "9000"], "train_size 9000"),
    ("ghost_size", ["--train-size", "500"], "batch size 512 is larger than train_size 500"),
    ("ghost_size", ["--max-updates", "-5"], "max_updates -5"),
    ("regime_length", ["--max-updates", "50"], "with max_updates"),
    ("ghost_size", ["--bn-weight-init", "normal"], "--bn-weight-init"),
    ("ghost_size", ["--zero-init-residual"], "zero_init_residual"),
    ("ghost_size", ["--protocol", "paper"], "--protocol"),
    ("ghost_size", ["--optimizer", "nesterov", "--momentum", "0"], "nesterov"),
]


@pytest.fixture
def no_ray(monkeypatch):
    def refuse(options):
        raise AssertionError("Ray was started for bad input")

    monkeypatch.setattr(run_module, "init_ray", refuse)


@pytest.mark.parametrize("name, argv, named", CASES,
                         ids=[f"{n}:{' '.join(a)}" for n, a, _ in CASES])
def test_bad_study_input(name, argv, named, tmp_path, no_ray, capsys):
    module = importlib.import_module(f"tunegap.studies.{name}")
    (tmp_path / "notes.txt").write_text("my notes, not a database\n")
    (tmp_path / "empty").mkdir()
    argv = [a.format(tmp=tmp_path) for a in argv]
    argv = [*argv, "--storage-path", str(tmp_path / "results")]
    if not any(a.startswith("--tracking-uri") for a in argv):
        argv += ["--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"]
    with pytest.raises(SystemExit) as stop:
        module.main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert named in lines[0]
    assert "Traceback" not in err and "secret" not in err
    # A refusal leaves nothing behind: not even an empty results folder.
    assert not (tmp_path / "results").exists()
    assert (tmp_path / "notes.txt").read_text() == "my notes, not a database\n"


def test_unwritable_storage_path_is_refused(tmp_path, no_ray, capsys):
    if os.geteuid() == 0:
        # root writes anywhere: a path under a regular file is unwritable for everyone.
        blocked = tmp_path / "file"
        blocked.write_text("x")
        storage = blocked / "results"
    else:
        storage = tmp_path / "ro"
        storage.mkdir(mode=0o500)
    module = importlib.import_module("tunegap.studies.ghost_size")
    with pytest.raises(SystemExit) as stop:
        module.main(["--storage-path", str(storage),
                     "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "not writable" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("margin", [-0.5, math.nan, math.inf])
def test_study_refuses_a_bad_margin_in_one_line(margin):
    with pytest.raises(StudyError, match="--margin") as err:
        Study(name="s", workload="mnist1d-cnn", margin=margin)
    assert len(str(err.value).splitlines()) == 1
    with pytest.raises(StudyError, match="--accuracy 'last'"):
        Study(name="s", workload="mnist1d-cnn", accuracy="last")


def test_resume_with_another_margin_is_refused(tmp_path, no_ray, capsys):
    """The margin is declared before the run: a resume may not move it."""
    run_dir = tmp_path / "results" / "ghost_size" / "20250101-000000"
    run_dir.mkdir(parents=True)
    module = importlib.import_module("tunegap.studies.ghost_size")
    original = module.build(module.parser().parse_args([]))
    assert original.describe()["margin"] == 0.5
    state = {"study": original.describe(), "parent_run_id": "0" * 32}
    (run_dir / run_module.STATE_FILE).write_text(json.dumps(state))
    with pytest.raises(SystemExit) as stop:
        module.main(["--margin", "1.0", "--resume", "--storage-path", str(tmp_path / "results"),
                     "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "--resume" in err and "other options" in err
