"""Seen / unseen classes over many class partitions and query conditions (MNIST, sklearn digits).

Each *partition* holds 3 of the 10 digit classes out as *unseen*: the encoder trains on images
of the 7 seen classes only; the database holds images of all 10 classes with their labels
(the unseen ones get codes from an encoder that never saw them); queries of seen and unseen
classes are scored apart. Partitions come in two disjoint sets drawn with fixed seeds:
``tune`` (3 partitions, for choosing recipes) and ``report`` (5 partitions, every class
unseen in at least one; the figures the README quotes). Each partition also draws its own
images.

Queries are scored under four conditions: ``clean``, ``shifted`` (each query moved by up to
+-2 px), ``noisy`` (Gaussian pixel noise, sd 0.1 of the range) and ``shifted+noisy``. Per
method, bits and condition: seen mAP@1000 and vote@8; unseen mAP@1000, vote@8 on codes, after
an F7 rerank of the 1,000 nearest codes, and after an F7 rerank of every code within a Hamming
radius (the ``radius`` coarse step); unseen mAP@1000 of the list the F7 rerank of the 1,000
nearest codes gives (``unseen_mAP_rerank``: what ``hashindex search`` lists by default); and, to
compare codes with the features they quantise, mAP@1000 (seen, unseen) and unseen vote@8 of an
exact Euclidean ranking of F7 (``*_f7``).
Each figure is reported as mean and sample sd over the partitions, with every partition's
value in the JSON. Each method trains for its own epoch budget (``MethodSetup.epochs``), else
the dataset budget's; ``--epochs`` sets every method's. A method with ``refit_of`` does not
train: it refits the code layer of that method's trained model (``TrainConfig.code_fit``).

Every step goes through the product's API: image folders -> ``train_encoder`` -> model file
-> ``encode_folder`` -> HDF5 shards -> ``HashIndex`` (flat) -> ``vote`` and
:mod:`hashindex.metrics`.

    python benchmarks/seen_unseen.py --partitions report           # CPU, the README's run
    python benchmarks/seen_unseen.py --partitions tune --methods proxy_anchor,ms --epochs 4
    python benchmarks/seen_unseen.py --partitions tune --only tune2 --conditions shifted+noisy --name t2
    python benchmarks/seen_unseen.py --partitions report --device cuda

Writes ``benchmarks/results/seen_unseen_<partitions>[_<name>].json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import faiss
import numpy as np
import torch

from encoders import load_encoder
from encoders.checkpoint import read_encoder_file, save_encoder
from encoders.code_fit import fit_codes
from encoders.data import list_images
from encoders.encode import encode_folder
from encoders.training import TrainConfig
from hashapp.pipeline import train_encoder
from hashindex import metrics
from hashindex.bench.args import name_list
from hashindex.durable import TMP_SUFFIX, replace_durably
from hashindex.datasets import load_digits_images, load_mnist, write_image_folder
from hashindex.index import HashIndex
from hashindex.store import ShardReader
from hashindex.vote import majority_vote
from hashindex.timing import environment

CLASSES = tuple(range(10))
UNSEEN_PER_PARTITION = 3
#: Seeds of the two partition sets; the tune set never repeats a report set's unseen classes.
PARTITION_SEEDS = {"report": 0, "tune": 1}
PARTITION_COUNTS = {"report": 5, "tune": 3}
CONDITIONS = ("clean", "shifted", "noisy", "shifted+noisy")
MAX_SHIFT = 2
NOISE_SD = 0.1  #: of the pixel range
K = 8
MAP_K = 1000
CANDIDATES = 1000
RESULTS_DIR = Path(__file__).resolve().parent / "results"
METRICS = ("seen_mAP", "seen_vote", "seen_vote_rerank", "unseen_mAP", "unseen_vote", "unseen_vote_rerank",
           "unseen_vote_radius", "unseen_mAP_rerank", "seen_mAP_f7", "unseen_mAP_f7", "unseen_vote_f7")


@dataclass(frozen=True)
class Partition:
    name: str
    unseen: tuple[int, ...]
    seed: int  #: draws this partition's images and query perturbations

    @property
    def seen(self) -> tuple[int, ...]:
        return tuple(c for c in CLASSES if c not in self.unseen)


def draw_partitions(kind: str) -> list[Partition]:
    """The ``report`` or ``tune`` partitions. Report: a seeded permutation of the classes cut
    into unseen triples, the last class completed by two random others (so each class is
    unseen at least once), then random triples; tune: random triples that are no report
    partition's."""
    if kind not in PARTITION_SEEDS:
        raise ValueError(f"unknown partition set {kind!r}; expected one of {', '.join(PARTITION_SEEDS)}")
    rng = np.random.default_rng(PARTITION_SEEDS[kind])
    triples: list[tuple[int, ...]] = []
    taken: set[tuple[int, ...]] = set()
    if kind == "report":
        order = rng.permutation(len(CLASSES)).tolist()
        triples = [tuple(sorted(order[i:i + 3])) for i in range(0, 9, 3)]
        others = rng.choice(order[:9], 2, replace=False).tolist()
        triples.append(tuple(sorted([order[9], *others])))
    else:
        taken = {p.unseen for p in draw_partitions("report")}
    while len(triples) < PARTITION_COUNTS[kind]:
        triple = tuple(sorted(rng.choice(len(CLASSES), UNSEEN_PER_PARTITION, replace=False).tolist()))
        if triple not in taken and triple not in triples:
            triples.append(triple)
    base = 1000 * (PARTITION_SEEDS[kind] + 1)
    return [Partition(f"{kind}{i}", t, base + i) for i, t in enumerate(triples)]


@dataclass
class Budget:
    """Images per partition and training length."""

    train_images: int  #: seen-class training images (they may also be database images)
    database_per_class: int
    queries_per_class: int
    epochs: int
    batch_size: int = 64


BUDGETS = {
    "mnist": Budget(train_images=4000, database_per_class=400, queries_per_class=100, epochs=4),
    "digits": Budget(train_images=600, database_per_class=60, queries_per_class=20, epochs=10, batch_size=32),
}


def split_rows(labels: np.ndarray, partition: Partition, budget: Budget) -> dict[str, np.ndarray]:
    """Row indices: ``queries`` and ``database`` (fixed counts of every class, disjoint) and
    ``train`` (up to ``budget.train_images`` seen-class rows that are not queries)."""
    rng = np.random.default_rng(partition.seed)
    queries, database, pool = [], [], []
    need = budget.queries_per_class + budget.database_per_class
    for c in CLASSES:
        rows = rng.permutation(np.flatnonzero(labels == c))
        if len(rows) < need:
            raise ValueError(f"class {c} has {len(rows)} images, the budget needs {need}")
        queries.extend(rows[:budget.queries_per_class])
        database.extend(rows[budget.queries_per_class:need])
        if c in partition.seen:
            pool.extend(rows[budget.queries_per_class:])
    train = rng.choice(np.array(pool), min(budget.train_images, len(pool)), replace=False)
    return {"train": np.sort(train), "database": np.sort(np.array(database)), "queries": np.sort(np.array(queries))}


def perturb(images: np.ndarray, condition: str, rng: np.random.Generator) -> np.ndarray:
    """``images`` (n, h, w) uint8 under a query condition: shifted by up to ``MAX_SHIFT`` px in
    each direction (vacated pixels 0, the background), Gaussian noise of sd ``NOISE_SD``, both."""
    if condition not in CONDITIONS:
        raise ValueError(f"unknown condition {condition!r}; expected one of {', '.join(CONDITIONS)}")
    out = images.astype(np.float32)
    if "shifted" in condition:
        shifts = rng.integers(-MAX_SHIFT, MAX_SHIFT + 1, size=(len(out), 2))
        out = np.stack([shift_image(im, dy, dx) for im, (dy, dx) in zip(out, shifts)])
    if "noisy" in condition:
        out = out + rng.normal(0.0, NOISE_SD * 255, size=out.shape)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def shift_image(image: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``image`` moved down ``dy`` and right ``dx`` pixels, zeros filling what is uncovered."""
    h, w = image.shape
    out = np.zeros_like(image)
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        image[max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def score(db: dict, queries: dict, seen: tuple[int, ...], bits: int, radius: int,
          pools: tuple[int, ...] = ()) -> dict[str, float]:
    """The :data:`METRICS` of one run: ``db`` and ``queries`` hold packed ``codes``, ``labels``
    and F7 ``features``; a flat index over ``db`` in its given order (Hamming ties go to the
    lower position, as in :func:`hashindex.metrics.mean_average_precision`); ``unseen_mAP_rerank``:
    mAP@``MAP_K`` of the F7 rerank of the ``CANDIDATES`` nearest codes. For each of
    ``pools``, also ``unseen_vote_rerank_<pool>``: the F7 rerank of that many nearest codes."""
    index = HashIndex(bits=bits, spec="flat")
    index.add(db["codes"], labels=db["labels"], features=db["features"])
    out = {}
    for part in ("seen", "unseen"):
        keep = np.isin(queries["labels"], seen) == (part == "seen")
        codes, labels, features = queries["codes"][keep], queries["labels"][keep], queries["features"][keep]
        out[f"{part}_mAP"] = metrics.mean_average_precision(codes, labels, db["codes"], db["labels"], bits, k=MAP_K)
        out[f"{part}_vote"] = metrics.vote_accuracy(index.vote(codes, k=K), labels)
        out[f"{part}_vote_rerank"] = metrics.vote_accuracy(
            index.vote(codes, k=K, features=features, candidates=CANDIDATES), labels)
    out["unseen_vote_radius"] = metrics.vote_accuracy(
        index.vote(codes, k=K, features=features, radius=radius), labels)
    # What `hashindex search` lists by default: the CANDIDATES nearest codes reranked by F7 (id -1 pads a
    # pool shorter than MAP_K; its label, -1, matches no query).
    _, ids = index.search_rerank(codes, features, k=MAP_K, candidates=CANDIDATES)
    out["unseen_mAP_rerank"] = float(metrics.average_precision_at_k(index.labels_of(ids), labels).mean())
    for pool in pools:
        out[f"unseen_vote_rerank_{pool}"] = metrics.vote_accuracy(
            index.vote(codes, k=K, features=features, candidates=pool), labels)
    return {**out, **score_f7(db, queries, seen)}


def score_f7(db: dict, queries: dict, seen: tuple[int, ...]) -> dict[str, float]:
    """``seen_mAP_f7``, ``unseen_mAP_f7`` (@``MAP_K``) and ``unseen_vote_f7`` (@``K``) of an exact
    Euclidean ranking of ``db``'s F7 ``features``: what codes that kept F7's neighbours would score."""
    flat = faiss.IndexFlatL2(db["features"].shape[1])
    flat.add(np.ascontiguousarray(db["features"]))
    _, rows = flat.search(np.ascontiguousarray(queries["features"]), min(MAP_K, len(db["labels"])))
    knn_labels = db["labels"][rows]
    ap = metrics.average_precision_at_k(knn_labels, queries["labels"])
    voted = majority_vote(knn_labels[:, :K])
    is_seen = np.isin(queries["labels"], seen)
    return {"seen_mAP_f7": float(ap[is_seen].mean()), "unseen_mAP_f7": float(ap[~is_seen].mean()),
            "unseen_vote_f7": metrics.vote_accuracy(voted[~is_seen], queries["labels"][~is_seen])}


@dataclass
class MethodSetup:
    """One row of the tables: a registered method with its training recipe."""

    label: str
    method: str
    backbone: str = "small_cnn"
    encoder_kwargs: dict = field(default_factory=lambda: {"input_size": 32})
    lr: float = 1e-3
    #: Beta parameter of mixup (0: off); see :mod:`encoders.mixup`.
    mixup: float = 0.0
    #: Key of the method whose trained backbone this one starts from (trained first if needed).
    init_trunk_from: str | None = None
    #: This method's own epoch budget (``None``: the dataset budget's); ``--epochs`` overrides both.
    epochs: int | None = None
    #: This method's epochs as a fraction of the above (a fine-tuning run shorter than its trunk's).
    epochs_scale: float = 1.0
    #: Training augmentation (``encoders.augment.AUGMENTATIONS``).
    augment: str = "shift"
    #: ``TrainConfig.code_fit``: how the code layer is set after training.
    code_fit: str = "trained"
    #: Key of a method trained exactly as this one but for ``code_fit``: its trained model is
    #: refit (:func:`encoders.code_fit.fit_codes`) instead of training again, which gives the same
    #: model (training is seeded and ``code_fit`` acts after the last epoch).
    refit_of: str | None = None
    #: ``TrainConfig.label_rotations``: train on (class, quarter turn) pairs, 4 x the seen classes.
    label_rotations: bool = False
    #: ``TrainConfig.views``: augmented views of each training image in the batch (a contrastive
    #: term across them is a model keyword, ``encoder_kwargs["contrastive_weight"]``).
    views: int = 1


BLUR_STEM = {"input_size": 32, "blur_sigma": 1.0}
METHODS = {
    # The classical anchor: ITQ fitted on raw 28 x 28 pixels of the seen training images.
    "itq_pixels": MethodSetup("ITQ (pixels)", "itq", backbone="pixels", encoder_kwargs={"input_size": 28}),
    # The earlier best recipe (one split, clean queries): DLBHC with mixup, HashNet fine-tuning its trunk.
    "dlbhc": MethodSetup("DLBHC + mixup", "dlbhc", mixup=1.0),
    "hashnet": MethodSetup("HashNet from DLBHC", "hashnet", lr=3e-4, mixup=1.0, init_trunk_from="dlbhc",
                           epochs_scale=0.4),
    "proxy_anchor": MethodSetup("Proxy-Anchor hash", "proxy_anchor_hash"),
    "ms": MethodSetup("Multi-Similarity hash", "ms_hash"),
    "supcon": MethodSetup("SupCon hash", "supcon_hash"),
    # The same recipes trained with pixel noise on half the images besides the shifts.
    "dlbhc_noise": MethodSetup("DLBHC + mixup, noise aug.", "dlbhc", mixup=1.0, augment="shift_noise"),
    "proxy_anchor_noise": MethodSetup("Proxy-Anchor hash, noise aug.", "proxy_anchor_hash", augment="shift_noise"),
    # Proxy-Anchor fine-tuning the trunk of DLBHC + mixup (both with noise aug.) for half the epochs.
    "proxy_anchor_trunk": MethodSetup("Proxy-Anchor hash from DLBHC, noise aug.", "proxy_anchor_hash",
                                      init_trunk_from="dlbhc_noise", epochs_scale=0.5, augment="shift_noise"),
    # Proxy-Anchor, noise aug., with its proxies learning 100x faster than the network.
    "proxy_anchor_plr100": MethodSetup("Proxy-Anchor hash, noise aug., proxies 100x lr", "proxy_anchor_hash",
                                       encoder_kwargs={"input_size": 32, "proxy_lr_scale": 100.0},
                                       augment="shift_noise"),
    # ... and a classifier's cross-entropy on the codes beside the metric term (weight 1).
    "proxy_anchor_cls": MethodSetup("Proxy-Anchor + classification hash, noise aug., proxies 100x lr",
                                    "proxy_anchor_hash", augment="shift_noise",
                                    encoder_kwargs={"input_size": 32, "proxy_lr_scale": 100.0,
                                                    "classification_weight": 1.0}),
    # Noise aug. and a fixed Gaussian blur stem (sd 1 px at 32 px) before the first convolution;
    # 12 epochs (the tune partitions: seen mAP@1000 0.896 -> 0.951 from 4 epochs, reranked unseen vote level).
    "proxy_anchor_blur": MethodSetup("Proxy-Anchor hash, noise aug., blur stem", "proxy_anchor_hash",
                                     encoder_kwargs=BLUR_STEM, augment="shift_noise", epochs=12),
    "dlbhc_blur": MethodSetup("DLBHC + mixup, noise aug., blur stem", "dlbhc", encoder_kwargs=BLUR_STEM, mixup=1.0,
                              augment="shift_noise"),
    "proxy_anchor_trunk_blur": MethodSetup("Proxy-Anchor hash from DLBHC, noise aug., blur stem",
                                           "proxy_anchor_hash", encoder_kwargs=BLUR_STEM, init_trunk_from="dlbhc_blur",
                                           epochs_scale=0.5, augment="shift_noise"),
    # The blur recipe with a wider blur (sd 1.5 px), at the budget's epochs.
    "proxy_anchor_blur15": MethodSetup("Proxy-Anchor hash, noise aug., blur stem sd 1.5", "proxy_anchor_hash",
                                       encoder_kwargs={**BLUR_STEM, "blur_sigma": 1.5}, augment="shift_noise"),
}


def _refit(key: str, code_fit: str, name: str) -> MethodSetup:
    """``METHODS[key]`` with its hash layer refit after training (``code_fit``), on the same trained network."""
    base = METHODS[key]
    return replace(base, label=f"{base.label}, {name} codes", code_fit=code_fit, refit_of=key)


# The recipe's network made to generalise to classes it never saw, each with its DBQ refit: trained on
# (class, quarter turn) pairs (28 proxies for 7 classes), a 512-d F7, a trunk 1.5 x as wide, and the
# first two together.
_RECIPE = METHODS["proxy_anchor_blur"]
_F7_512 = {**BLUR_STEM, "feature_dim": 512}
METHODS["proxy_anchor_blur_rot"] = replace(_RECIPE, label=f"{_RECIPE.label}, rotation classes", label_rotations=True)
METHODS["proxy_anchor_blur_f512"] = replace(_RECIPE, label=f"{_RECIPE.label}, F7 512", encoder_kwargs=_F7_512)
METHODS["proxy_anchor_blur_rot_f512"] = replace(_RECIPE, label=f"{_RECIPE.label}, rotation classes, F7 512",
                                                label_rotations=True, encoder_kwargs=_F7_512)
METHODS["proxy_anchor_blur_w48"] = replace(_RECIPE, label=f"{_RECIPE.label}, width 48",
                                           encoder_kwargs={**BLUR_STEM, "width": 48})
# Rotation classes made to keep the seen classes compact: the rotation-trained network's trunk (F7
# included) fine-tuned upright on the 7 seen classes, the recipe otherwise, for a third of its epochs (4 of 12):
# a new hash layer and 7 proxies; or the rotation classes trained twice as long (28 classes, 4 x the work).
_ROT = METHODS["proxy_anchor_blur_rot"]
METHODS["proxy_anchor_blur_rot_up"] = replace(_RECIPE, label=f"{_RECIPE.label}, upright fine-tune of the rotation "
                                              "trunk", init_trunk_from="proxy_anchor_blur_rot", epochs_scale=1 / 3)
METHODS["proxy_anchor_blur_rot24"] = replace(_ROT, label=f"{_ROT.label}, 24 epochs", epochs=24)
# ... and both: the 24-epoch rotation trunk fine-tuned upright for 4 epochs.
METHODS["proxy_anchor_blur_rot24_up"] = replace(
    METHODS["proxy_anchor_blur_rot_up"], label=f"{_RECIPE.label}, upright fine-tune of the 24-epoch rotation trunk",
    init_trunk_from="proxy_anchor_blur_rot24")
# ... with half the upright epochs (2): the upright stage pulls the seen classes together, at some cost to
# the structure the rotation trunk holds for classes never seen.
METHODS["proxy_anchor_blur_rot24_up2"] = replace(
    METHODS["proxy_anchor_blur_rot24_up"], label=f"{_RECIPE.label}, 2 upright epochs from the 24-epoch rotation trunk",
    epochs_scale=1 / 6)
_ROT_KEYS = ("proxy_anchor_blur_rot_up", "proxy_anchor_blur_rot24", "proxy_anchor_blur_rot24_up",
             "proxy_anchor_blur_rot24_up2")
# The refits: ITQ of F7, or double-bit quantisation of unit-length F7 (encoders.code_fit).
METHODS["proxy_anchor_blur_itq"] = _refit("proxy_anchor_blur", "itq", "ITQ")
METHODS["proxy_anchor_blur_rot24_up_itq"] = _refit("proxy_anchor_blur_rot24_up", "itq", "ITQ")
for _key in ("proxy_anchor_blur", "proxy_anchor_blur_rot", "proxy_anchor_blur_f512", "proxy_anchor_blur_w48",
             "proxy_anchor_blur_rot_f512", *_ROT_KEYS):
    METHODS[f"{_key}_dbq"] = _refit(_key, "dbq", "DBQ")
# Two augmented views of every training image at half the epochs (the same images seen per run as
# the 12-epoch recipe): Proxy-Anchor on both views, plus NT-Xent on F7 across the views (weight 0.5).
METHODS["proxy_anchor_views_ntx"] = MethodSetup(
    "Proxy-Anchor hash, noise aug., blur stem, 2 views + NT-Xent on F7 (0.5)", "proxy_anchor_hash",
    encoder_kwargs={**BLUR_STEM, "contrastive_weight": 0.5}, augment="shift_noise", epochs=6, views=2)
METHODS["proxy_anchor_views_ntx_dbq"] = _refit("proxy_anchor_views_ntx", "dbq", "DBQ")
# ... and the second view alone, without the NT-Xent term.
METHODS["proxy_anchor_views"] = MethodSetup("Proxy-Anchor hash, noise aug., blur stem, 2 views", "proxy_anchor_hash",
                                            encoder_kwargs=BLUR_STEM, augment="shift_noise", epochs=6, views=2)
METHODS["proxy_anchor_views_dbq"] = _refit("proxy_anchor_views", "dbq", "DBQ")
#: The anchors the issue names, the recipe's trained network (a 24-epoch rotation-class trunk, then upright;
#: the trunk is trained but not scored) and its DBQ refit (the recipe: no training of its own); README,
#: "Results", gives the run's time.
DEFAULT_METHODS = ("itq_pixels", "dlbhc", "hashnet", "proxy_anchor_blur_rot24_up", "proxy_anchor_blur_rot24_up_dbq")


def load_dataset(name: str, mnist_root: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    if name == "mnist":
        return load_mnist(mnist_root)
    if name == "digits":
        return load_digits_images(size=32)
    raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(BUDGETS)}")


@dataclass
class Run:
    """What one partition's training needs: folders, work dir, budget and settings."""

    folders: dict[str, Path]
    n_train: int
    work: Path
    budget: Budget
    bits: int
    seed: int
    device: str
    progress: bool
    epochs: int | None = None  #: ``--epochs``: every method's epochs, instead of its own or the budget's
    trained: dict[str, Path] = field(default_factory=dict)


def method_epochs(setup: MethodSetup, budget: Budget, override: int | None = None) -> int:
    """Epochs ``setup`` trains for: ``override``, else its own, else ``budget``'s, times its scale."""
    return max(1, round((override or setup.epochs or budget.epochs) * setup.epochs_scale))


def train_method(key: str, run: Run) -> tuple[Path, float]:
    """Train ``METHODS[key]`` on the seen classes (once per run): ``(model file, seconds)``."""
    if key in run.trained:
        return run.trained[key], 0.0
    setup = METHODS[key]
    epochs = method_epochs(setup, run.budget, run.epochs)
    config = TrainConfig(epochs=epochs, batch_size=run.budget.batch_size, lr=setup.lr, optimizer="adam",
                         lr_schedule="cosine", seed=run.seed, augment=setup.augment, mixup=setup.mixup,
                         device=run.device, code_fit=setup.code_fit, label_rotations=setup.label_rotations,
                         views=setup.views)
    path = run.work / f"{key}-{run.bits}.pt"
    if setup.refit_of:
        return refit_method(key, config, run, path)
    trunk = train_method(setup.init_trunk_from, run)[0] if setup.init_trunk_from else None
    kwargs = dict(setup.encoder_kwargs)
    if setup.method == "hashnet":
        # HashNet's continuation compressed into this run: ~10 increments of beta, up to ~7.
        steps = epochs * math.ceil(run.n_train / run.budget.batch_size)
        kwargs.update(step_size=max(1, math.ceil(steps / 10)), gamma=48.0 / max(1, steps))
    start = time.perf_counter()
    train_encoder(run.folders["train"], path, method=setup.method, backbone=setup.backbone, bits=run.bits,
                  config=config, encoder_kwargs=kwargs, init_trunk_from=trunk, progress=run.progress)
    run.trained[key] = path
    return path, time.perf_counter() - start


def refit_method(key: str, config: TrainConfig, run: Run, path: Path) -> tuple[Path, float]:
    """``METHODS[key]`` from the trained model of its ``refit_of`` with ``config.code_fit``
    applied: ``(model file, seconds of the refit)``."""
    base, _ = train_method(METHODS[key].refit_of, run)
    start = time.perf_counter()
    model = load_encoder(base)
    fit_codes(model, list_images(run.folders["train"], supervised=True), config.code_fit, seed=config.seed,
              batch_size=config.batch_size, device=config.device)
    extra = read_encoder_file(base)["extra"]
    save_encoder(model, path, class_names=model.class_names,
                 extra={**extra, "train_config": {**extra.get("train_config", {}), "code_fit": config.code_fit}})
    run.trained[key] = path
    return path, time.perf_counter() - start


def encode(model, folder: Path, out: Path, run: Run) -> dict[str, np.ndarray]:
    encode_folder(model, folder, out, device=run.device, batch_size=256, progress=run.progress)
    data = ShardReader(out).read(("codes", "labels", "features"))
    data["features"] = data["features"].astype(np.float32)
    return data


def run_partition(partition: Partition, images: np.ndarray, labels: np.ndarray, methods: list[str],
                  bits_list: list[int], budget: Budget, *, radius: int | None, device: str, work_dir: Path | None,
                  progress: bool, conditions: tuple[str, ...] = CONDITIONS, pools: tuple[int, ...] = (),
                  epochs: int | None = None, echo=print) -> list[dict]:
    """Every method at every code length on one partition: one row per (method, bits), scored
    under ``conditions`` (every condition's queries are drawn all the same, so that each is the
    same set of images whichever are scored); ``pools``: see :func:`score`; ``epochs``: see
    :func:`method_epochs`."""
    rows = split_rows(labels, partition, budget)
    rng = np.random.default_rng(partition.seed)
    names = [str(c) for c in CLASSES]
    out = []
    if work_dir is not None:
        work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        tmp = Path(tmp)
        folders = {
            # Only the seen classes get folders: the encoder must not know the unseen ones exist.
            "train": write_image_folder(images[rows["train"]], np.searchsorted(partition.seen, labels[rows["train"]]),
                                        tmp / "train", class_names=[str(c) for c in partition.seen]),
            "database": write_image_folder(images[rows["database"]], labels[rows["database"]], tmp / "database",
                                           class_names=names),
        }
        query_images, query_labels = images[rows["queries"]], labels[rows["queries"]]
        for condition in CONDITIONS:
            folders[condition] = write_image_folder(perturb(query_images, condition, rng), query_labels,
                                                    tmp / f"q-{condition}", class_names=names, prefix="q")
        # Encoded in folder order (class-major, unseen classes together): index the database in
        # a seeded random order so that Hamming ties are not decided by class.
        order = np.random.default_rng(partition.seed).permutation(len(rows["database"]))
        for bits in bits_list:
            run = Run(folders, len(rows["train"]), tmp, budget, bits, partition.seed, device, progress, epochs)
            for key in methods:
                model_path, train_s = train_method(key, run)
                model = load_encoder(model_path)
                start = time.perf_counter()
                db = encode(model, folders["database"], tmp / f"{key}-{bits}-db", run)
                db = {name: values[order] for name, values in db.items()}
                row = {"partition": partition.name, "method": key, "bits": bits,
                       "epochs": method_epochs(METHODS[key], budget, epochs), "train_s": train_s, "conditions": {}}
                for condition in conditions:
                    queries = encode(model, folders[condition], tmp / f"{key}-{bits}-{condition}", run)
                    row["conditions"][condition] = score(db, queries, partition.seen, bits,
                                                         bits // 8 if radius is None else radius, pools)
                row["eval_s"] = time.perf_counter() - start
                final = row["conditions"][conditions[-1]]
                echo(f"[{partition.name} unseen {partition.unseen}] {METHODS[key].label} {bits} bits: "
                     f"seen mAP {final['seen_mAP']:.3f}, unseen vote {final['unseen_vote']:.3f} / rerank "
                     f"{final['unseen_vote_rerank']:.3f} ({conditions[-1]}; train {train_s:.0f} s)", flush=True)
                out.append(row)
    return out


def summarise(rows: list[dict]) -> dict:
    """``{method: {bits: {condition: {metric: {mean, sd, values}}}}}`` over the partitions
    (sd: sample standard deviation, 0 for one partition)."""
    summary: dict = {}
    for row in rows:
        by_condition = summary.setdefault(row["method"], {}).setdefault(str(row["bits"]), {})
        for condition, values in row["conditions"].items():
            for metric, value in values.items():
                by_condition.setdefault(condition, {}).setdefault(metric, {"values": []})["values"].append(value)
    for by_bits in summary.values():
        for by_condition in by_bits.values():
            for by_metric in by_condition.values():
                for entry in by_metric.values():
                    v = np.array(entry["values"])
                    entry["mean"] = float(v.mean())
                    entry["sd"] = float(v.std(ddof=1)) if len(v) > 1 else 0.0
    return summary


def markdown_tables(summary: dict, epochs: dict[str, int]) -> str:
    """One table per scored condition; ``epochs``: each method's training epochs."""
    header = "| method | epochs | bits | " + " | ".join(METRICS) + " |"
    lines = []
    scored = {c for by_bits in summary.values() for by_condition in by_bits.values() for c in by_condition}
    for condition in (c for c in CONDITIONS if c in scored):
        lines += [f"### {condition}", "", header, "|---|---|---|" + "---|" * len(METRICS)]
        for key, by_bits in summary.items():
            for bits, by_condition in by_bits.items():
                cells = [f"{by_condition[condition][m]['mean']:.3f} ± {by_condition[condition][m]['sd']:.3f}"
                         for m in METRICS]
                lines.append(f"| {METHODS[key].label} | {epochs[key]} | {bits} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--partitions", choices=sorted(PARTITION_SEEDS), default="report")
    parser.add_argument("--limit-partitions", type=int, default=None, help="run only the first N (smoke runs)")
    parser.add_argument("--only", default="", help="comma-separated partition names to run (default: all)")
    parser.add_argument("--dataset", choices=sorted(BUDGETS), default="mnist")
    parser.add_argument("--methods", type=name_list(METHODS, "method(s)"), default=",".join(DEFAULT_METHODS),
                        help=f"comma-separated, from {', '.join(METHODS)}")
    parser.add_argument("--bits", default="64", help="comma-separated code lengths")
    parser.add_argument("--epochs", type=int, default=None, help="every method's epochs (default: the method's "
                        "own budget, else the dataset budget's; a fine-tuning method trains its share of them)")
    parser.add_argument("--train-images", type=int, default=None, help="default: the dataset budget's")
    parser.add_argument("--radius", type=int, default=None, help="Hamming radius of the radius coarse step "
                        "(default: bits // 8)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--threads", type=int, default=2, help="torch and Faiss threads")
    parser.add_argument("--mnist-root", default=None, help="default: $HASHINDEX_MNIST or ../shared/data/mnist")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--work-dir", type=Path, default=None, help="where the temporary folders go")
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--conditions", type=name_list(CONDITIONS, "condition(s)"), default=",".join(CONDITIONS),
                        help="comma-separated query conditions to score (tuning: shifted+noisy alone is cheaper)")
    parser.add_argument("--pools", default="", help="comma-separated F7-rerank pool sizes scored besides "
                        f"{CANDIDATES} (unseen vote@{K})")
    parser.add_argument("--name", default="", help="suffix of the result files: seen_unseen_<partitions>[_<name>]")
    args = parser.parse_args(argv)
    bits_list = [int(b) for b in args.bits.split(",") if b]
    conditions = tuple(c for c in CONDITIONS if c in args.conditions)
    if not conditions:
        parser.error(f"--conditions: expected names from {', '.join(CONDITIONS)}, got {args.conditions!r}")
    budget = replace(BUDGETS[args.dataset], **({"train_images": args.train_images} if args.train_images else {}))
    partitions = [p for p in draw_partitions(args.partitions)[:args.limit_partitions]
                  if not args.only or p.name in args.only.split(",")]
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    images, labels = load_dataset(args.dataset, args.mnist_root)
    clock = (time.perf_counter(), time.process_time())
    rows: list[dict] = []
    payload: dict = {}
    for done, partition in enumerate(partitions, start=1):
        rows += run_partition(partition, images, labels, args.methods, bits_list, budget,
                              radius=args.radius, device=args.device, work_dir=args.work_dir,
                              progress=args.progress, conditions=conditions,
                              pools=tuple(int(n) for n in args.pools.split(",") if n), epochs=args.epochs)
        # Written after every partition, so that a run cut short keeps what it measured.
        payload = write_results(args, budget, partitions, done, args.methods, rows, clock)
    return payload


def write_results(args, budget: Budget, partitions: list[Partition], done: int, methods: list[str],
                  rows: list[dict], clock: tuple[float, float]) -> dict:
    """Write ``seen_unseen_<partitions>.json`` and ``.md`` (each atomically) for the first
    ``done`` partitions; returns the JSON payload."""
    summary = summarise(rows)
    payload = {"benchmark": "seen_unseen", "args": {k: str(v) for k, v in vars(args).items()},
               "environment": environment(threads=args.threads, device=args.device), "dataset": args.dataset,
               "budget": asdict(budget), "conditions": {"max_shift_px": MAX_SHIFT, "noise_sd": NOISE_SD},
               "k": K, "map_k": MAP_K, "candidates": CANDIDATES,
               "partitions": [{**asdict(p), "seen": list(p.seen)} for p in partitions[:done]],
               "complete": done == len(partitions), "methods": {m: asdict(METHODS[m]) for m in methods},
               "total_s": time.perf_counter() - clock[0], "cpu_s": time.process_time() - clock[1],
               "rows": rows, "summary": summary}
    stem = args.out / "_".join(filter(None, ("seen_unseen", args.partitions, args.name)))
    text = (f"Seen / unseen, {args.dataset}, {args.partitions} partitions "
            f"({', '.join(f'{p.name}: unseen {p.unseen}' for p in partitions[:done])}"
            f"{'' if payload['complete'] else f'; {done} of {len(partitions)} done'}); "
            f"{budget.train_images} seen training images, {budget.database_per_class} database and "
            f"{budget.queries_per_class} query images per class; mean ± sd over "
            f"partitions. Total {payload['total_s'] / 60:.1f} min ({payload['cpu_s'] / 60:.1f} CPU min) on "
            f"{args.threads} thread(s), device {args.device}.\n\n"
            + markdown_tables(summary, {row["method"]: row["epochs"] for row in rows}))
    _write_atomic(stem.with_suffix(".json"), json.dumps(payload, indent=2, default=float))
    _write_atomic(stem.with_suffix(".md"), text)
    print(text)
    return payload


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + TMP_SUFFIX)
    tmp.write_text(text, encoding="utf-8")
    replace_durably(tmp, path)


if __name__ == "__main__":
    main(sys.argv[1:])
