"""Training ingest on Ray Data: sample shards -> encoded training rows, cached or streamed by their size.

``datasets_for(cfg)`` reads ``<data>/train`` and ``<data>/val`` (``ecg.shards.file_batches``), encodes train rows
in CPU actors that load the processor only (:class:`Encode`: ``vlm.training.encode_rows``, no model weights),
and materializes them once when their estimated size fits the cache budget, else streams them (re-encoded each
epoch). ``cfg`` is the training job's config (``ecgvlm train``'s ``TrainConfig``): it reads ``data``, ``model``,
``tiny``, ``followups``, ``image_splitting``, ``longest_edge``, ``batch_size``, ``train_rows``, ``val_rows``, ``cache``,
``cache_gb``, ``num_workers``, ``encode_actors`` and ``encode_cpus``.

Example::

    datasets, n_train, ingest = datasets_for(cfg)   # {"train": Dataset, "val": Dataset}, 24, {"mode": "memory", ...}
"""

from __future__ import annotations

from ecg import storage


class Encode:
    """Ray Data stage: sample rows -> encoded training rows (``vlm.training.encode_rows``), the processor loaded once
    per actor (no model weights). A row that fails keeps its place with an ``error``; the workers count it."""

    def __init__(self, model: str, tiny: dict, image_splitting: bool | None, longest_edge: int | None,
                 followups: bool = False):
        from vlm.load import load_processor

        self.loaded = load_processor(model, tiny=tiny or None, image_splitting=image_splitting,
                                     longest_edge=longest_edge)
        self.followups = followups

    def __call__(self, batch):
        from vlm.training import encode_rows

        return encode_rows(self.loaded, batch, followups=self.followups)


COLUMNS = ["id", "task", "image", "question", "answer", "meta"]
READ_CPUS = 0.25  # a shard read's CPU share (pipelines.launch.cpu_shares leaves room for one beside the workers)


def _read(cfg, split: str):
    """``(dataset, rows)``: the split's sample rows streamed from its shards (``ecg.shards.file_batches`` on a
    quarter CPU per file: the read must find room beside the workers and encoders on a 2-core machine)."""
    import ray

    from ecg import shards

    uri = storage.join(cfg.data, split)
    files = storage.list_files(uri, ".parquet")
    if not files:
        return None, 0
    n_rows = shards.parquet_dataset(uri).count_rows()  # Parquet footers only
    ds = ray.data.from_items([{"path": f} for f in files], override_num_blocks=len(files))
    ds = ds.map_batches(shards.file_batches, fn_kwargs={"columns": COLUMNS}, batch_size=1, num_cpus=READ_CPUS)
    if cfg.train_rows and split == "train":
        ds, n_rows = ds.limit(cfg.train_rows), min(n_rows, cfg.train_rows)
    return ds, n_rows


def _ingest(cfg, train, n_rows: int) -> dict:
    """``{"mode": "memory" | "stream", "shuffle_rows": n}``: cache the encoded rows when their estimated size fits
    the budget (a few rows are encoded here to measure it), and how each epoch is shuffled. Printed.

    Cached rows are encoded once, before training, and each worker keeps its share in its own memory after the first
    pass (:class:`EpochBatches`): every epoch is a new permutation of the rows, at no cost per row. Streamed rows
    come in file order, so each worker shuffles them in a local buffer sized to an eighth of the object store, up to
    256 rows (a buffer of 64 rows of 17-tile pages would hold 850 MiB)."""
    import ray

    from vlm.load import load_processor
    from vlm.training import encode_rows, encoded_nbytes

    store = ray.cluster_resources().get("object_store_memory", 0.0)
    budget = cfg.cache_gb * 2**30 if cfg.cache_gb else store / 4
    sample = train.limit(4).to_pandas()
    per_row = encoded_nbytes(encode_rows(load_processor(cfg.model, tiny=cfg.tiny or None,
                                                        image_splitting=cfg.image_splitting,
                                                        longest_edge=cfg.longest_edge), sample,
                                         followups=cfg.followups)) / max(1, len(sample))
    total = per_row * n_rows
    mode = cfg.cache if cfg.cache != "auto" else ("memory" if total <= budget else "stream")
    how = ("materialized once, every epoch reads the cache" if mode == "memory" else
           "streamed: Ray Data re-encodes the rows every epoch, nothing per-row is kept")
    if mode == "memory":
        shuffle_rows = 0  # a permutation of the worker's rows every epoch
    else:  # each worker's buffer: rows fetched from the object store and held there until shuffled into a batch
        shuffle_rows = int(min(256, store / 8 / max(1, cfg.num_workers) / max(per_row, 1.0)))
        shuffle_rows = shuffle_rows if shuffle_rows > cfg.batch_size else 0  # 0: no local shuffle (files are mixed)
    order = ("each worker keeps its rows after the first pass and permutes them every epoch" if mode == "memory"
             else f"local shuffle buffer {shuffle_rows} rows per worker")
    print(f"train ingest: {n_rows} rows x ~{per_row / 2**20:.2f} MiB encoded = ~{total / 2**30:.2f} GiB; "
          f"cache budget {budget / 2**30:.2f} GiB (object store {store / 2**30:.2f} GiB, cache={cfg.cache}): {how}; "
          f"{order}", flush=True)
    return {"mode": mode, "shuffle_rows": shuffle_rows, "row_mib": round(per_row / 2**20, 3)}


PATCH_ROWS = 256  # train rows whose patches set the patch filters (patch_init: pca): ~50,000 patches of 32 px


def patch_filters(cfg) -> dict:
    """``{"weight", "bias", "stats"}`` (numpy) for ``patch_init: pca``: the whitened principal patches of the first
    train rows (``vlm.patch_init.pca_filters``), worked out once here so every worker starts from the same ones.
    The rows are read straight from the shards' first files (no Ray tasks to start and cancel); the model is built
    on the driver only for its patch embedding's shape."""
    from ecg import shards
    from vlm import finetune as ft
    from vlm.patch_init import patch_embedding, pca_filters
    from vlm.training import Collator, encode_rows

    loaded = ft.load_for_training(cfg.model, tiny=cfg.tiny or None, image_splitting=cfg.image_splitting,
                                  longest_edge=cfg.longest_edge, config_overrides=cfg.config_overrides or None)
    n = min(PATCH_ROWS, cfg.train_rows or PATCH_ROWS)
    rows = shards.parquet_dataset(storage.join(cfg.data, "train")).head(n, columns=COLUMNS).to_pandas()
    encoded = encode_rows(loaded, rows)
    pixels = Collator.for_loaded(loaded)(encoded)["pixel_values"]
    weight, bias, stats = pca_filters(pixels, tuple(patch_embedding(loaded.model).weight.shape))
    print(f"train: patch filters from {stats['patches']:,} patches of {len(pixels)} train pages "
          f"(the {stats['filters']} whitened principal ones keep {100 * stats['explained']:.0f}% of their variance)",
          flush=True)
    return {"weight": weight.numpy(), "bias": bias.numpy(), "stats": stats}


def datasets_for(cfg):
    """``(datasets, n_train, ingest)``: the encoded train dataset (materialized or streamed) and the val rows."""
    import ray

    train, n_train = _read(cfg, "train")
    if n_train == 0:
        raise ValueError(f"{cfg.data}/train: no rows")
    ingest = _ingest(cfg, train, n_train)
    if getattr(cfg, "patch_init", "random") == "pca":
        ingest["patch_filters"] = patch_filters(cfg)
    # Encoding multiplies a row's bytes (a 400 KB page becomes 0.9 MiB at 896 px, 13 MiB as 17 tiles): with
    # Ray Data's usual blocks (up to 128 MiB of PNGs) one task would encode a whole file's rows at once, past any
    # small store before backpressure acts. Streamed rows go in blocks of about one encoded row, so a few batches are
    # in flight. Cached rows are encoded before training starts, in blocks of a batch, by as many actors as the
    # cluster's CPUs hold (one per 8 blocks at most): nothing else runs yet.
    memory = ingest["mode"] == "memory"
    per_block = cfg.batch_size if memory else max(1, min(cfg.batch_size, 16))
    row_bytes = ingest["row_mib"] * 2**20
    train.context.target_max_block_size = int(max(2**20, row_bytes * (per_block if memory else 1)))
    encode_cpus = cfg.encode_cpus or 0.5
    actors = cfg.encode_actors
    if memory:
        room = int((ray.cluster_resources().get("CPU", 1.0) - READ_CPUS) // encode_cpus)
        actors = max(actors, min(room, -(-n_train // (8 * per_block))))
    encoded = train.map_batches(
        Encode, fn_constructor_kwargs={"model": cfg.model, "tiny": cfg.tiny, "followups": cfg.followups,
                                       "image_splitting": cfg.image_splitting,
                                       "longest_edge": cfg.longest_edge},
        batch_size=per_block, batch_format="pandas", num_cpus=cfg.encode_cpus,
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors))
    datasets = {"train": encoded.materialize() if memory else encoded}
    ingest["encode_actors"] = actors
    val, n_val = _read(cfg, "val") if cfg.val_rows else (None, 0)
    if n_val:
        datasets["val"] = val.limit(cfg.val_rows).materialize()
    return datasets, n_train, ingest


class EpochBatches:
    """What one Ray Train worker iterates each epoch: ``EpochBatches(shard, ingest, ...)(epoch, collate)`` -> batches.

    Cached rows (``ingest["mode"] == "memory"``): the first call reads the worker's share of the encoded rows once
    and keeps it; every epoch is then a permutation of those rows from ``seed``, ``epoch`` and ``rank`` (a rerun
    sees the same orders), through ``vlm.training.iter_cached``. Streamed rows: Ray Data's batches of the epoch,
    through a local shuffle buffer of ``ingest["shuffle_rows"]``. Batches are whole (``batch_size``); a row that
    failed to encode is counted and skipped by ``collate``.
    """

    def __init__(self, shard, ingest: dict, *, batch_size: int, seed: int, rank: int):
        self.shard, self.ingest, self.batch_size, self.seed, self.rank = shard, ingest, batch_size, seed, rank
        self.rows: dict | None = None

    def _cached(self) -> dict:
        import numpy as np

        if self.rows is None:
            columns: dict[str, list] = {}
            for batch in self.shard.iter_batches(batch_size=None, batch_format="numpy"):
                for key, values in batch.items():
                    columns.setdefault(key, []).extend(values)
            self.rows = {}
            for key, values in columns.items():  # one object per row, as vlm.training.encode_rows gives them
                column = np.empty(len(values), dtype=object)
                for i, value in enumerate(values):
                    column[i] = value
                self.rows[key] = column
        return self.rows

    def __call__(self, epoch: int, collate):
        from vlm.training import iter_cached

        seed = self.seed + 1000 * epoch + self.rank
        if self.ingest["mode"] == "memory":
            return iter_cached(self._cached(), batch_size=self.batch_size, seed=seed, collate=collate)
        shuffle = self.ingest["shuffle_rows"] or None
        return self.shard.iter_torch_batches(batch_size=self.batch_size, collate_fn=collate, drop_last=True,
                                             local_shuffle_buffer_size=shuffle,
                                             local_shuffle_seed=seed if shuffle else None)
