"""The CLI end to end on a tiny folder: build, search, eval, index, encode, train."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from hashindex import HashIndex, ShardReader
from hashindex.cli import main

TINY = ["--epochs", "2", "--bits", "32", "--batch-size", "16"]


@pytest.fixture(scope="module")
def built(tmp_path_factory, digits_folder):
    out = tmp_path_factory.mktemp("cli") / "build"
    result = CliRunner().invoke(main, ["build", str(digits_folder), "--out", str(out), "--shard-size", "50", *TINY])
    assert result.exit_code == 0, result.output
    return out


def test_help_for_every_command():
    runner = CliRunner()
    for command in main.list_commands(None):
        result = runner.invoke(main, [command, "--help"])
        assert result.exit_code == 0 and "Usage:" in result.output, command


def test_build_lays_out_model_shards_index(built, digits_folder):
    assert (built / "model.pt").is_file()
    assert len(ShardReader(built / "shards")) == 120
    index = HashIndex.load(built / "index")
    assert index.bits == 32 and len(index) == 120 and index.class_names == ["0", "1", "2", "3"]


def test_search_prints_neighbours_paths_and_vote(built, digits_folder):
    query = sorted((digits_folder / "2").iterdir())[0]
    result = CliRunner().invoke(main, ["search", str(built / "index"), str(query), "-k", "8", "--json"])
    assert result.exit_code == 0, result.output
    (item,) = json.loads(result.output)
    assert len(item["neighbours"]) == 8
    first = item["neighbours"][0]
    assert first["distance"] == 0 and first["path"] == str(query.resolve())  # the query itself is indexed
    assert item["voted_class"] in {"0", "1", "2", "3"}
    text = CliRunner().invoke(main, ["search", str(built / "index"), str(query), "--rerank", "--candidates", "20"])
    assert text.exit_code == 0 and "voted class:" in text.output and str(query.resolve()) in text.output


def test_search_reports_unreadable_query(built, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_text("nope")
    result = CliRunner().invoke(main, ["search", str(built / "index"), str(bad)])
    assert result.exit_code == 0 and "unreadable" in result.output


def test_eval_and_index_and_encode(built, digits_folder, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["encode", str(digits_folder), "--model", str(built / "model.pt"),
                                  "--out", str(tmp_path / "q")])
    assert result.exit_code == 0 and "encoded 120 images" in result.output
    result = runner.invoke(main, ["eval", str(built / "index"), str(tmp_path / "q"), "--out", str(tmp_path / "m.json")])
    assert result.exit_code == 0, result.output
    figures = json.loads((tmp_path / "m.json").read_text())
    # mAP is named after the depth used: the database holds 120 codes, fewer than the default 1000.
    assert 0 <= figures["mAP@120"] <= 1 and figures["queries"] == 120 and "mAP@1000" not in figures
    # Queries equal to the indexed images: the top-1 neighbour is at distance 0, so P@8 is at least 1/8.
    assert figures["P@8"] >= 0.125
    result = runner.invoke(main, ["index", str(built / "shards"), "--spec", "HNSW8", "--out", str(tmp_path / "h")])
    assert result.exit_code == 0, result.output
    assert str(HashIndex.load(tmp_path / "h").spec) == "HNSW8"


def test_eval_scores_unseen_classes_apart(built, digits_folder, tmp_path):
    from hashindex.evaluate import evaluate

    runner = CliRunner()
    assert runner.invoke(main, ["encode", str(digits_folder), "--model", str(built / "model.pt"),
                                "--out", str(tmp_path / "q")]).exit_code == 0
    result = runner.invoke(main, ["eval", str(built / "index"), str(tmp_path / "q"), "--unseen", "2,3", "--map-k", "50",
                                  "--out", str(tmp_path / "m.json")])
    assert result.exit_code == 0, result.output
    assert "[seen classes]" in result.output and "[unseen classes]" in result.output
    figures = json.loads((tmp_path / "m.json").read_text())
    assert figures["seen"]["queries"] == figures["unseen"]["queries"] == 60
    # The unseen figures are those of evaluate() on the queries of classes 2 and 3 alone.
    q = ShardReader(tmp_path / "q").read(("codes", "labels"))
    db = ShardReader(built / "shards").read(("codes", "labels"))
    keep = np.isin(q["labels"], [2, 3])
    alone = evaluate(HashIndex.load(built / "index"), q["codes"][keep], q["labels"][keep], db["codes"], db["labels"],
                     map_k=50)
    assert figures["unseen"]["mAP@50"] == alone["mAP@50"] and figures["unseen"]["P@8"] == alone["P@8"]
    bad = runner.invoke(main, ["eval", str(built / "index"), str(tmp_path / "q"), "--unseen", "7"])
    assert bad.exit_code == 1 and "unseen class(es) 7 not among the query classes: 0, 1, 2, 3" in bad.output


def test_bad_spec_is_a_clear_error(built, tmp_path):
    result = CliRunner().invoke(main, ["index", str(built / "shards"), "--spec", "IVFx", "--out", str(tmp_path / "x")])
    assert result.exit_code == 1 and "Error:" in result.output and "valid specs" in result.output


def test_train_command(tmp_path, digits_folder):
    result = CliRunner().invoke(main, ["train", str(digits_folder), "--out", str(tmp_path / "m.pt"), *TINY,
                                       "--lr-schedule", "cosine", "--augment", "shift", "--mixup", "0.5"])
    assert result.exit_code == 0, result.output
    import torch

    from encoders import load_encoder

    model = load_encoder(tmp_path / "m.pt")
    assert model.bits == 32 and model.class_names == ["0", "1", "2", "3"]
    config = torch.load(tmp_path / "m.pt", weights_only=True)["extra"]["train_config"]
    assert (config["lr_schedule"], config["augment"], config["mixup"], config["epochs"]) == ("cosine", "shift", 0.5, 2)


def test_train_command_starts_from_a_trained_trunk(tmp_path, digits_folder):
    first = CliRunner().invoke(main, ["train", str(digits_folder), "--out", str(tmp_path / "dlbhc.pt"), *TINY])
    assert first.exit_code == 0, first.output
    result = CliRunner().invoke(main, ["train", str(digits_folder), "--out", str(tmp_path / "hashnet.pt"), *TINY,
                                       "--method", "hashnet", "--init-from", str(tmp_path / "dlbhc.pt")])
    assert result.exit_code == 0, result.output
    wrong = CliRunner().invoke(main, ["train", str(digits_folder), "--out", str(tmp_path / "x.pt"), *TINY,
                                      "--backbone", "pixels", "--init-from", str(tmp_path / "dlbhc.pt")])
    assert wrong.exit_code == 1 and "holds a 'small_cnn' backbone, this encoder uses 'pixels'" in wrong.output


def test_training_choices_match_the_training_loop():
    from encoders.training import AUGMENTATIONS, LR_SCHEDULES
    from hashindex.cli import AUGMENT_CHOICES, LR_SCHEDULE_CHOICES

    assert LR_SCHEDULE_CHOICES == LR_SCHEDULES
    assert AUGMENT_CHOICES == tuple("none" if a is None else a for a in AUGMENTATIONS)


def test_list_command():
    result = CliRunner().invoke(main, ["list"])
    assert "dlbhc" in result.output and "small_cnn" in result.output


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path):
    from hashindex.demo import run_demo

    lines = []
    figures = run_demo(tmp_path / "demo", epochs=2, progress=False, echo=lines.append)
    assert (tmp_path / "demo" / "neighbours.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "demo" / "results.json").read_text())["mAP@1000"] == figures["mAP@1000"]
    assert figures["vote_accuracy"] > 0.5 and any("mAP@1000" in line for line in lines)
