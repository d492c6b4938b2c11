"""The CLI end to end on a tiny folder: build, search, eval, index, encode, train."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from hashindex import HashIndex, ShardReader
from hashapp.cli import main

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
    result = CliRunner().invoke(main, ["search", str(built / "index"), str(query), "-k", "8", "--json",
                                       "--no-rerank"])
    assert result.exit_code == 0, result.output
    (item,) = json.loads(result.output)
    assert len(item["neighbours"]) == 8
    first = item["neighbours"][0]
    assert first["distance"] == 0 and first["path"] == str(query.resolve())  # the query itself is indexed
    assert item["voted_class"] in {"0", "1", "2", "3"}
    # By default the index's F7 features rerank the pool: Euclidean distances, the query first
    # (its stored features are float16, so its distance is near 0 rather than 0).
    result = CliRunner().invoke(main, ["search", str(built / "index"), str(query), "--candidates", "20", "--json"])
    (item,) = json.loads(result.output)
    distances = [n["distance"] for n in item["neighbours"]]
    assert item["neighbours"][0]["path"] == str(query.resolve()) and distances[0] < 0.05
    assert distances == sorted(distances) and any(d != int(d) for d in distances)
    text = CliRunner().invoke(main, ["search", str(built / "index"), str(query), "--rerank", "--candidates", "20"])
    assert text.exit_code == 0 and "voted class:" in text.output and str(query.resolve()) in text.output


def test_search_json_distances_labels_html_and_grid(built, digits_folder, tmp_path):
    queries = [str(sorted((digits_folder / c).iterdir())[0]) for c in ("0", "3")]
    runner = CliRunner()
    result = runner.invoke(main, ["search", str(built / "index"), *queries, "-k", "5", "--json", "--no-rerank", "--label", "1",
                                  "--label", "2", "--html", str(tmp_path / "r.html"), "--grid", str(tmp_path / "r.png")])
    assert result.exit_code == 0, result.output
    items = json.loads(result.stdout)
    for item in items:
        assert item["distance_kind"] == "hamming" and len(item["neighbours"]) == 5
        assert all(type(n["distance"]) is int and n["class"] in ("1", "2") for n in item["neighbours"])
    page = (tmp_path / "r.html").read_text()
    assert page.count("class='neighbour'") == 10 and page.count("data:image/png;base64,") == 12
    from PIL import Image

    assert Image.open(tmp_path / "r.png").size[0] > 500  # 1 query + 5 neighbours per row
    reranked = json.loads(runner.invoke(main, ["search", str(built / "index"), queries[0], "--json", "--rerank",
                                               "--candidates", "20"]).stdout)
    assert reranked[0]["distance_kind"] == "euclidean" and type(reranked[0]["neighbours"][0]["distance"]) is float


def test_grid_title_states_the_real_k(tmp_path, monkeypatch):
    import matplotlib.figure

    from hashapp.viz import neighbour_grid

    titles = []
    monkeypatch.setattr(matplotlib.figure.Figure, "suptitle", lambda self, text, **kw: titles.append(text))
    image = np.zeros((8, 8), np.uint8)
    neighbour_grid([image], [0], [[image] * 3], [[0, 1, 0]], tmp_path / "g.png")
    neighbour_grid([image], [None], [[image] * 12], [[0] * 12], tmp_path / "h.png")
    assert titles == ["Queries and their 3 nearest neighbours (red ✗: wrong class)",
                      "Queries and their 12 nearest neighbours"]


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
    from hashapp.evaluate import evaluate

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


def test_train_command_step_budget(tmp_path, digits_folder):
    import torch

    # 120 images in batches of 16: 8 steps an epoch; a budget of 16 steps is 2 epochs.
    result = CliRunner().invoke(main, ["train", str(digits_folder), "--out", str(tmp_path / "m.pt"), "--bits", "32",
                                       "--batch-size", "16", "--step-budget", "16"])
    assert result.exit_code == 0, result.output
    extra = torch.load(tmp_path / "m.pt", weights_only=True)["extra"]
    config = extra["train_config"]
    assert (config["step_budget"], config["epochs"], len(extra["history"])) == (16, 2, 2)


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
    from encoders.code_fit import CODE_FITS
    from encoders.head_init import HEAD_INITS
    from encoders.augment import AUGMENTATIONS
    from encoders.training import LR_SCHEDULES
    from hashapp.cli import AUGMENT_CHOICES, CODE_FIT_CHOICES, HEAD_INIT_CHOICES, LR_SCHEDULE_CHOICES

    assert LR_SCHEDULE_CHOICES == LR_SCHEDULES
    assert AUGMENT_CHOICES == tuple("none" if a is None else a for a in AUGMENTATIONS)
    assert HEAD_INIT_CHOICES == HEAD_INITS
    assert CODE_FIT_CHOICES == CODE_FITS


def test_list_command_describes_every_registered_method_and_backbone():
    from encoders import list_backbones, list_encoders
    from hashapp.catalogue import BACKBONES, METHODS

    assert sorted(METHODS) == list_encoders() and sorted(BACKBONES) == list_backbones()
    lines = CliRunner().invoke(main, ["list"]).output.splitlines()
    for name in [*METHODS, *BACKBONES]:
        (line,) = [line for line in lines if line.split()[:1] == [name]]
        assert len(line.split()) > 3  # a description follows the name
    assert any("efficientnet_lite0" in line and "weights installed" in line for line in lines)


def test_list_imports_no_torch():
    import subprocess
    import sys

    script = ("import sys\nsys.modules['torch'] = None\nfrom hashapp.cli import main\n"
              "main(['list'], standalone_mode=False)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "hashnet" in result.stdout


def _train_with_stderr_on_a_terminal(tmp_path, digits_folder, *options) -> tuple[str, str]:
    """Run `hashindex train` in a subprocess whose stderr is a pseudo-terminal: (stdout, stderr)."""
    import os
    import pty
    import subprocess
    import sys

    import fcntl
    import struct
    import termios

    main_fd, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # tqdm draws nothing at width 0
    with open(os.devnull) as nothing:
        result = subprocess.run([sys.executable, "-m", "hashapp.cli", *options, "train", str(digits_folder),
                                 "--out", str(tmp_path / "m.pt"), *TINY], stdin=nothing, stdout=subprocess.PIPE,
                                stderr=terminal, text=True, timeout=600)
    os.close(terminal)
    seen = b""
    while True:
        try:
            chunk = os.read(main_fd, 65536)
        except OSError:  # EIO: the terminal is closed and drained
            break
        if not chunk:
            break
        seen += chunk
    os.close(main_fd)
    assert result.returncode == 0, seen.decode(errors="replace")[-2000:]
    return result.stdout, seen.decode(errors="replace")


@pytest.mark.slow
def test_training_prints_a_summary_and_progress_only_on_a_terminal_unless_quiet(tmp_path, digits_folder):
    out, terminal = _train_with_stderr_on_a_terminal(tmp_path, digits_folder)
    assert "epoch 2/2" in terminal  # the bars stay on screen (the training history)
    assert "trained 2 epoch(s): final loss" in out and "train accuracy" in out
    out, terminal = _train_with_stderr_on_a_terminal(tmp_path, digits_folder, "--quiet")
    assert "epoch 1/2" not in terminal and "trained 2 epoch(s)" in out
    result = CliRunner().invoke(main, ["train", str(digits_folder), "--out", str(tmp_path / "m.pt"), *TINY])
    assert result.exit_code == 0 and "\r" not in result.stderr  # not a terminal: silent without --quiet


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path):
    from hashapp.demo import run_demo

    import warnings

    import torch

    lines = []
    with warnings.catch_warnings():
        # DLBHC's classification codes share codes within a class only: a note, not a collapse warning.
        warnings.simplefilter("error", UserWarning)
        figures = run_demo(tmp_path / "demo", epochs=2, progress=False, echo=lines.append)
    health = torch.load(tmp_path / "demo" / "build" / "model.pt", weights_only=True)["extra"]["code_health"]
    assert health["class_level"] and not health["collapsed"] and health["distinct"] >= health["classes"] == 10
    assert (tmp_path / "demo" / "neighbours.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "demo" / "results.json").read_text())["mAP@1000"] == figures["mAP@1000"]
    assert figures["vote_accuracy"] > 0.5 and any("mAP@1000" in line for line in lines)


def test_train_command_fine_tunes_a_rotation_trained_trunk_upright(tmp_path, digits_folder):
    # The README's two-step recipe: rotation classes (4 classes x 4 turns), then the same method upright from
    # that trunk with 4 proxies and the DBQ code layer.
    import torch

    from encoders import load_encoder

    recipe = [str(digits_folder), *TINY, "--method", "proxy_anchor_hash", "--augment", "shift_noise"]
    first = CliRunner().invoke(main, ["train", *recipe, "--rotation-classes", "--out", str(tmp_path / "rot.pt")])
    assert first.exit_code == 0, first.output
    result = CliRunner().invoke(main, ["train", *recipe, "--init-from", str(tmp_path / "rot.pt"), "--code-fit", "dbq",
                                       "--out", str(tmp_path / "pa.pt")])
    assert result.exit_code == 0, result.output
    rot, upright = load_encoder(tmp_path / "rot.pt"), load_encoder(tmp_path / "pa.pt")
    assert [len(m.metric_loss.proxies) for m in (rot, upright)] == [16, 4]
    assert upright.class_names == ["0", "1", "2", "3"]
    config = torch.load(tmp_path / "pa.pt", weights_only=True)["extra"]["train_config"]
    assert (config["label_rotations"], config["code_fit"]) == (False, "dbq")
