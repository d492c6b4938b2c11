"""``hashindex`` command line: a thin click layer over the Python API."""

from __future__ import annotations

import json
from pathlib import Path

import click

from hashindex.export import FORMATS as EXPORT_FORMATS
from hashindex.spec import SPEC_GRAMMAR

# encoders.training's LR_SCHEDULES, encoders.augment's AUGMENTATIONS, encoders.head_init's HEAD_INITS and
# encoders.code_fit's CODE_FITS, spelled out so that `--help` needs no torch import (tests/hashindex/test_cli.py
# checks that they agree).
LR_SCHEDULE_CHOICES = ("constant", "cosine", "exponential")
AUGMENT_CHOICES = ("none", "shift", "shift_flip", "shift_noise")
HEAD_INIT_CHOICES = ("random", "itq", "random_centred")
CODE_FIT_CHOICES = ("trained", "itq", "dbq")

_EXISTING_DIR = click.Path(exists=True, file_okay=False, path_type=Path)


def _set_threads(ctx: click.Context, _param, threads: int | None) -> None:
    if threads:
        import faiss
        import torch

        faiss.omp_set_num_threads(threads)
        torch.set_num_threads(threads)


def _set_quiet(ctx: click.Context, _param, quiet: bool) -> None:
    ctx.meta["hashindex.quiet"] = quiet


def _progress() -> bool:
    """Show progress bars unless ``--quiet`` (they are silent anyway when stderr is no terminal)."""
    return not click.get_current_context().meta.get("hashindex.quiet", False)


def _echo_training_summary(model_path: Path) -> None:
    from encoders.checkpoint import read_encoder_file
    from encoders.training import training_summary

    history = read_encoder_file(model_path).get("extra", {}).get("history")
    if history:
        click.echo(training_summary(history))


class _Group(click.Group):
    """Bad input (``ValueError``, hence ``ShardError``) and environment errors (``OSError``: a
    missing or existing file, a full or read-only disk, a store locked by another writer) end a
    command with one ``Error: <message>`` line and exit status 1 rather than a traceback; Ctrl-C
    with one line and status 130 (complete shards are kept for ``--resume``)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (ValueError, OSError) as exc:
            raise click.ClickException(" ".join(str(exc).split()) or type(exc).__name__) from exc
        except KeyboardInterrupt:
            click.echo("Error: interrupted; what was complete is kept (rerun with --resume to continue)", err=True)
            ctx.exit(130)


def _printable(path: str) -> str:
    """A file name for the terminal: bytes that are not UTF-8 shown as U+FFFD."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--threads", type=click.IntRange(min=1), default=None, callback=_set_threads, expose_value=False,
              help="Threads for Faiss and torch (default: all cores).")
@click.option("--quiet", "-q", is_flag=True, callback=_set_quiet, expose_value=False, is_eager=True,
              help="No progress bars (they are off anyway when stderr is not a terminal).")
@click.version_option(package_name="hashindex")
def main() -> None:
    """Image retrieval with deep binary hashing: train an encoder, encode an image folder
    into HDF5 shards, index them with Faiss, and search by Hamming distance."""


def _train_options(fn):
    options = [
        click.option("--method", default="dlbhc", help="Hashing method (see `hashindex list`)."),
        click.option("--backbone", default="small_cnn", help="Feature extractor (see `hashindex list`)."),
        click.option("--bits", type=click.IntRange(min=8), default=64, help="Code length, a multiple of 8."),
        click.option("--epochs", type=click.IntRange(min=1), default=None,
                     help="[default: 10; with a pretrained backbone, the epochs closest to --step-budget steps]."),
        click.option("--batch-size", type=click.IntRange(min=2), default=None,
                     help="Training batch [default: 64; 32 for efficientnet_lite0, which stays under 3 GB]."),
        click.option("--lr", type=click.FloatRange(min=0), default=None,
                     help="Learning rate (of the hash head) "
                          "[default: 1e-3; DLBHC and HashNet on a pretrained backbone: 1e-4]."),
        click.option("--optimizer", type=click.Choice(["adam", "sgd"]), default="adam"),
        click.option("--lr-schedule", type=click.Choice(LR_SCHEDULE_CHOICES), default="constant",
                     help="Per-step learning-rate schedule (to lr / 100)."),
        click.option("--augment", type=click.Choice(AUGMENT_CHOICES), default="none",
                     help="Random shifts (and flips) of the training images."),
        click.option("--mixup", type=click.FloatRange(min=0), default=0.0,
                     help="Train on blends of image pairs, weights ~ Beta(MIXUP, MIXUP); 0 = off. "
                          "Helps codes of classes not trained on (1.0 in the seen/unseen benchmark)."),
        click.option("--seed", type=int, default=0),
        click.option("--device", default="auto", help="auto, cpu or cuda."),
        # These default to None (as --lr and --batch-size): the backbone's recipe
        # (encoders.training.resolve_train_config) decides.
        click.option("--backbone-lr-scale", type=click.FloatRange(min=0), default=None,
                     help="Backbone learning rate = lr x this "
                          "[default: 0.1 with pretrained weights (DLBHC, HashNet: 1), else 1]."),
        click.option("--warmup-epochs", type=click.IntRange(min=0), default=None,
                     help="First epochs in which only the hash head trains [default: 0]."),
        click.option("--freeze-early/--train-early", default=None,
                     help="Keep a pretrained backbone's early layers frozen [default: frozen when pretrained]."),
        click.option("--freeze-bn/--train-bn", default=None,
                     help="Keep the backbone's batch-norm statistics (scale and shift still train) "
                          "[default: yes for DLBHC and HashNet on a pretrained backbone, else no]."),
        click.option("--step-budget", type=click.IntRange(min=1), default=None,
                     help="Without --epochs: train about this many optimiser steps (whole epochs, 1 to 10) "
                          "[default: 20 with pretrained weights, else none: 10 epochs]."),
        click.option("--head-init", type=click.Choice(HEAD_INIT_CHOICES), default=None,
                     help="Start the hash layer from ITQ of the training images' features, at random, or at "
                          "random with every bit's hyperplane through the features' mean [default: random]."),
        click.option("--code-fit", type=click.Choice(CODE_FIT_CHOICES), default="trained", show_default=True,
                     help="After training, keep the trained hash layer or refit it on the training images' "
                          "features: ITQ, or two bits per ITQ projection of unit-length features (dbq, "
                          "metric-learning methods; the codes hold classes not trained on better: README "
                          "'Results')."),
        click.option("--rotation-classes", "label_rotations", is_flag=True, default=False,
                     help="Train on each image turned by a random multiple of 90 degrees, labelled (class, "
                          "turn): 4 x the classes, features that hold more shape (supervised methods, square "
                          "inputs, no --mixup; README 'Results')."),
        click.option("--quantization", type=click.FloatRange(min=0), default=None,
                     help="Weight of a term pulling relaxed bits to +-1 (0 = off) [default: 0]."),
        click.option("--bit-balance", type=click.FloatRange(min=0), default=None,
                     help="Weight of a term making each bit on for half the batch (0 = off); spreads "
                          "near-constant bits [default: 1 for DLBHC on a pretrained backbone, else 0]."),
        click.option("--decorrelation", type=click.FloatRange(min=0), default=None,
                     help="Weight of a term making the bits uncorrelated over the batch, so that no bit "
                          "repeats another (0 = off) [default: 0]."),
        # Two views per image and the contrastive term across them (README "Results", "Seen / unseen classes").
        click.option("--views", type=click.IntRange(min=1), default=1, show_default=True,
                     help="Augment each training image this many times independently, every view in the batch "
                          "(needs --augment; not with --mixup)."),
        click.option("--contrastive-weight", type=click.FloatRange(min=0), default=None,
                     help="Metric-learning methods: weight of an NT-Xent term on F7 that pulls the views of each "
                          "image together and pushes other images apart (needs --views 2) [default: 0]."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _encoder_kwargs(method: str, contrastive_weight: float | None) -> dict:
    """The model keywords among the training options (the rest go to :func:`_train_config`)."""
    if contrastive_weight is None:
        return {}
    from encoders.metric_hash import VARIANTS_BY_LOSS

    if method not in VARIANTS_BY_LOSS.values():
        raise ValueError(f"--contrastive-weight is for the metric-learning methods "
                         f"({', '.join(VARIANTS_BY_LOSS.values())}), not {method!r}")
    return {"contrastive_weight": contrastive_weight}


def _train_config(epochs, batch_size, lr, optimizer, lr_schedule, augment, mixup, seed, device, checkpoint_dir=None,
                  resume=False, **recipe):
    from encoders.training import TrainConfig

    return TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer, lr_schedule=lr_schedule,
                       augment=None if augment == "none" else augment, mixup=mixup, seed=seed, device=device,
                       checkpoint_dir=None if checkpoint_dir is None else str(checkpoint_dir), resume=resume,
                       **recipe)


@main.command()
@click.argument("image_dir", type=_EXISTING_DIR)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("model.pt"),
              help="Encoder file to write.")
@_train_options
@click.option("--checkpoint-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Save a checkpoint after every epoch here.")
@click.option("--resume", is_flag=True, help="Continue from the last checkpoint in --checkpoint-dir.")
@click.option("--init-from", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Encoder file whose trained backbone this one starts from (e.g. a DLBHC model for HashNet).")
def train(image_dir, out, method, backbone, bits, epochs, batch_size, lr, optimizer, lr_schedule, augment, mixup,
          seed, device, checkpoint_dir, resume, init_from, contrastive_weight, **recipe):
    """Train an encoder on IMAGE_DIR and save it to --out.

    Supervised methods need one sub-folder per class; unsupervised ones (lsh, itq, gan_hash, ...)
    take any folder of images."""
    from .pipeline import train_encoder

    config = _train_config(epochs, batch_size, lr, optimizer, lr_schedule, augment, mixup, seed, device,
                           checkpoint_dir, resume, **recipe)
    path = train_encoder(image_dir, out, method=method, backbone=backbone, bits=bits, config=config,
                         encoder_kwargs=_encoder_kwargs(method, contrastive_weight), init_trunk_from=init_from,
                         progress=_progress())
    _echo_training_summary(path)
    click.echo(f"saved encoder to {path}")


@main.command()
@click.argument("image_dir", type=_EXISTING_DIR)
@click.option("--model", "model_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="Encoder file written by `hashindex train`.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Shard directory.")
@click.option("--shard-size", type=click.IntRange(min=1), default=10_000, help="Records per shard file.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64)
@click.option("--resume", is_flag=True, help="Continue an interrupted encode after its last complete shard.")
@click.option("--device", default="auto")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
              help="Encode on Ray workers: --ray alone starts a local Ray instance, --ray HOST:PORT joins a cluster.")
@click.option("--workers", type=click.IntRange(min=1), default=2, help="Ray workers (with --ray).")
@click.option("--chunk-size", type=click.IntRange(min=1), default=None,
              help="Images per Ray task (with --ray; default: --shard-size).")
def encode(image_dir, model_path, out, shard_size, batch_size, resume, device, ray_address, workers, chunk_size):
    """Encode every image of IMAGE_DIR into HDF5 shards (codes, F7 features, labels, ids, paths)."""
    from encoders import load_encoder
    from encoders.encode import SKIPPED_REPORT, encode_folder

    if ray_address is not None:
        from encoders.distributed_encode import encode_folder_ray

        ray_report = encode_folder_ray(model_path, image_dir, out, num_workers=workers, chunk_size=chunk_size,
                                       shard_size=shard_size, batch_size=batch_size, resume=resume, device=device,
                                       address=None if ray_address == "local" else ray_address)
        click.echo(f"encoded {ray_report.num_images} images into {out} on {workers} Ray worker(s): "
                   f"{ray_report.encoded} records, {ray_report.images_per_second:.1f} images/s")
        _report_skipped([(s["path"], s["reason"]) for s in ray_report.skipped], out / SKIPPED_REPORT)
        return
    report = encode_folder(load_encoder(model_path), image_dir, out, shard_size=shard_size, batch_size=batch_size,
                           resume=resume, device=device, progress=_progress())
    click.echo(f"encoded {report.encoded} images into {out} ({report.total} records in the store)")
    _report_skipped(report.skipped, out / SKIPPED_REPORT)


def _report_skipped(skipped, report_file: Path) -> None:
    if skipped:
        click.echo(f"skipped {len(skipped)} unreadable file(s), listed in {report_file}:", err=True)
        for path, reason in skipped[:10]:
            click.echo(f"  {_printable(path)}: {_printable(reason)}", err=True)


@main.command("index")
@click.argument("shards", type=_EXISTING_DIR)
@click.option("--spec", default="flat", help=f"Index spec: {SPEC_GRAMMAR}.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Index directory.")
@click.option("--model", "model_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Encoder file to remember for `hashindex search`.")
def index_cmd(shards, spec, out, model_path):
    """Load the shards in SHARDS into a Faiss binary index and save it to --out."""
    from .pipeline import index_shards

    index = index_shards(shards, out, spec=spec, model_path=model_path, progress=_progress())
    click.echo(f"saved {index} to {out}")


@main.command()
@click.argument("index_dir", type=_EXISTING_DIR)
@click.argument("query_images", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("-k", type=click.IntRange(min=1), default=8, help="Neighbours per query.")
@click.option("--model", "model_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Encoder file (default: the one recorded with the index).")
@click.option("--rerank/--no-rerank", default=None, show_default=False,
              help="Rerank a Hamming candidate pool by Euclidean distance on F7 before voting "
                   "[default: on when the index holds features].")
@click.option("--candidates", type=click.IntRange(min=1), default=1000, help="Pool size for the rerank.")
@click.option("--label", "labels", multiple=True, help="Only neighbours of this class (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON.")
@click.option("--html", "html_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the neighbours as a self-contained HTML page.")
@click.option("--grid", "grid_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the neighbours as a PNG grid.")
def search(index_dir, query_images, k, model_path, rerank, candidates, labels, as_json, html_out, grid_out):
    """Find the k nearest neighbours of each QUERY_IMAGE in the index at INDEX_DIR and vote its class."""
    from .query import search_images

    results = search_images(index_dir, query_images, k=k, model_path=model_path, rerank=rerank,
                            candidates=candidates, labels=list(labels) or None)
    if html_out or grid_out:
        from .viz import results_grid, results_html

        if html_out:
            results_html(results, html_out)
        if grid_out:
            results_grid(results, grid_out)
    if as_json:
        click.echo(json.dumps(results, indent=2))
        return
    for item in results:
        if "error" in item:
            click.echo(f"{_printable(item['query'])}: unreadable ({_printable(item['error'])})", err=True)
            continue
        click.echo(f"{_printable(item['query'])}  ->  voted class: {item['voted_class']}")
        for rank, n in enumerate(item["neighbours"], 1):
            click.echo(f"  {rank:2d}. id {n['id']:>8}  distance {n['distance']:<8g}  class {n['class']:<12} "
                       f"{_printable(n['path'])}")


@main.command("eval")
@click.argument("index_dir", type=_EXISTING_DIR)
@click.argument("query_shards", type=_EXISTING_DIR)
@click.option("--database", type=_EXISTING_DIR, default=None,
              help="Shards of the indexed codes (default: the ones the index was built from).")
@click.option("-k", type=click.IntRange(min=1), default=8, help="Neighbours for P@k and voting.")
@click.option("--map-k", type=click.IntRange(min=1), default=1000,
              help="Depth of mAP@k (the database size when smaller; the figure is named after the depth used).")
@click.option("--unseen", default=None, metavar="CLASS,...",
              help="Classes the encoder never saw: their queries are scored apart from the others'.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write the figures as JSON.")
def eval_cmd(index_dir, query_shards, database, k, map_k, unseen, out):
    """Score the index at INDEX_DIR with the labelled queries in QUERY_SHARDS."""
    from .query import evaluate_index

    unseen = [c.strip() for c in unseen.split(",") if c.strip()] if unseen else None
    figures = evaluate_index(index_dir, query_shards, database=database, k=k, map_k=map_k, unseen=unseen)
    for part, part_figures in (figures.items() if unseen else [(None, figures)]):
        if part:
            click.echo(f"[{part} classes]")
        for name, value in part_figures.items():
            click.echo(f"{name:32s} {value:.4f}" if isinstance(value, float) else f"{name:32s} {value}")
    if out:
        out.write_text(json.dumps(figures, indent=2))


@main.command()
@click.argument("image_dir", type=_EXISTING_DIR)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Directory for model.pt, shards/ and index/.")
@_train_options
@click.option("--spec", default="flat", help=f"Index spec: {SPEC_GRAMMAR}.")
@click.option("--model", "model_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Use this encoder instead of training one.")
@click.option("--shard-size", type=click.IntRange(min=1), default=10_000)
@click.option("--resume", is_flag=True, help="Continue an interrupted build.")
def build(image_dir, out, method, backbone, bits, epochs, batch_size, lr, optimizer, lr_schedule, augment, mixup,
          seed, device, spec, model_path, shard_size, resume, contrastive_weight, **recipe):
    """Train, encode and index IMAGE_DIR in one go."""
    from . import pipeline

    result = pipeline.build(image_dir, out, model_path=model_path, spec=spec, shard_size=shard_size,
                            batch_size=batch_size or 64, resume=resume, method=method, backbone=backbone,
                            bits=bits, progress=_progress(), encoder_kwargs=_encoder_kwargs(method, contrastive_weight),
                            config=_train_config(epochs, batch_size, lr, optimizer, lr_schedule, augment, mixup,
                                                 seed, device, **recipe))
    if model_path is None:
        _echo_training_summary(result.model_path)
    click.echo(f"model {result.model_path}\nshards {result.shards_dir}\nindex {result.index_dir}: {result.index}")
    from encoders.encode import SKIPPED_REPORT

    _report_skipped(result.encode_report.skipped, result.shards_dir / SKIPPED_REPORT)


@main.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("demo-output"),
              help="Output directory (replaced).")
@click.option("--epochs", type=click.IntRange(min=1), default=8)
@click.option("--bits", type=click.IntRange(min=8), default=64)
@click.option("--seed", type=int, default=0)
def demo(out, epochs, bits, seed):
    """Run the whole job on sklearn's embedded digits and print its figures."""
    from .demo import run_demo

    run_demo(out, epochs=epochs, bits=bits, seed=seed, echo=click.echo, progress=_progress())


@main.command("list")
def list_cmd():
    """List the hashing methods and backbones, one line each, and whether weights are available."""
    from .catalogue import catalogue_lines

    click.echo("\n".join(catalogue_lines()))


@main.command("export")
@click.argument("index_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(EXPORT_FORMATS), required=True,
              help="ann-benchmarks: one HDF5 file (Hamming dataset); faiss: a directory with index.faiss and rows.csv.")
@click.option("--queries", type=click.IntRange(min=1), default=1000, show_default=True,
              help="ann-benchmarks: test codes sampled from the index and held out of train.")
@click.option("--count", type=click.IntRange(min=1), default=100, show_default=True,
              help="ann-benchmarks: exact neighbours stored per test code.")
@click.option("--seed", type=int, default=0, show_default=True)
def export_cmd(index_dir, out, fmt, queries, count, seed):
    """Export the index at INDEX_DIR to OUT for ann-benchmarks or raw Faiss (see `hashindex.export`)."""
    from hashindex.export import export_ann_benchmarks, export_faiss
    from hashindex.index import HashIndex

    index = HashIndex.load(index_dir)
    if fmt == "faiss":
        export_faiss(index, out)
    else:
        export_ann_benchmarks(index, out, queries=queries, count=count, seed=seed)
    click.echo(f"exported {len(index)} codes to {out} ({fmt})")


from .serve import serve_command  # noqa: E402 - cheap: Ray is imported only when it runs

main.add_command(serve_command)

from .bench import bench_command  # noqa: E402 - matplotlib and usearch are imported only when it runs

main.add_command(bench_command)

from .update import add_command, remove_command  # noqa: E402 - torch is imported only when they run

main.add_command(add_command)
main.add_command(remove_command)

from .web import serve_http_command  # noqa: E402 - Starlette and uvicorn are imported only when it runs

main.add_command(serve_http_command)

if __name__ == "__main__":
    main()
