"""Validation during training: held-out rows scored with the live training weights (``Validator``), through the
same ``vlm.Predictor`` that evaluation uses.

Example::

    Validator(loaded, model, val_df, task="code15")(state)   # {"f1": 61.2, "code15/f1": 61.2, ...}
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vlm.finetune import LoopState

class Validator:
    """Held-out sample rows encoded once; each call generates with the live training weights and scores every
    row with its own task (``metrics.score_frame``, ECGBench protocol) through the same ``vlm.Predictor``
    evaluation uses. Rows whose task is not registered, or whose image fails, are counted, not scored.

    Returns the headline task's figures as plain keys (``f1``, ``auc``, ...: ``task`` if the val rows have it,
    else their most common task) and every task's as ``<task>/<metric>``, plus ``rows`` and ``failed``.
    Example: ``Validator(loaded, model, val_df)()`` -> ``{"f1": 61.2, "code15/f1": 61.2, "ptbxl-super/f1": ...}``.
    """

    def __init__(self, loaded, model, rows, *, task: str = "code15", batch_size: int = 32):
        import dataclasses

        import pandas as pd

        from ecgtasks import get_task
        from vlm.finetune import unwrap
        from vlm.predict import Predictor
        from vlm.prompt import row_history
        from vlm.training import decode_image

        frame = pd.DataFrame(rows).reset_index(drop=True)
        if "task" not in frame:
            frame["task"] = task
        self.batch_size = batch_size
        # the same module object as the one being trained: its weights change in place, no copy; inputs go where
        # the training worker put it (a GPU under NCCL), not where it was loaded
        live = unwrap(model)
        param = next(live.parameters())
        self.predictor = Predictor.from_loaded(dataclasses.replace(loaded, model=live, device=param.device,
                                                                   dtype=param.dtype))
        self.groups: dict[str, tuple] = {}  # task -> (row frame, encoded rows, max_new_tokens)
        self.failed: list[str] = []
        metas = frame["meta"] if "meta" in frame else [None] * len(frame)
        for name, part in frame.assign(_meta=list(metas)).groupby("task", sort=True):
            try:
                spec = get_task(name)
            except KeyError as e:
                self.failed += [f"row {i}: {e.args[0]}" for i in part["id"]]
                continue
            kept, encoded = [], []
            for pos, (rid, image, question, meta) in enumerate(zip(part["id"], part["image"], part["question"],
                                                                   part["_meta"])):
                try:
                    encoded.append(self.predictor.encode_one(decode_image(rid, image), question,
                                                             max_new_tokens=spec.max_new_tokens,
                                                             history=row_history(meta)))
                    kept.append(pos)
                except ValueError as e:
                    self.failed.append(str(e))
            if kept:
                self.groups[spec.name] = (part.iloc[kept].reset_index(drop=True), encoded, spec.max_new_tokens)
        counts = {name: len(g[0]) for name, g in self.groups.items()}
        self.headline = task if task in counts else max(counts, key=counts.get) if counts else task

    def predictions(self, name: str) -> list[str]:
        _, encoded, budget = self.groups[name]
        out: list[str] = []
        for s in range(0, len(encoded), self.batch_size):
            out += self.predictor.generate_encoded(encoded[s:s + self.batch_size], max_new_tokens=budget)
        return out

    def __call__(self, state: LoopState | None = None) -> dict:
        import pandas as pd

        from metrics import score_frame

        keys = ("f1", "auc", "hamming_loss", "anls", "accuracy")
        out: dict = {"rows": float(sum(len(g[0]) for g in self.groups.values())), "failed": float(len(self.failed))}
        for name, (part, _, _) in self.groups.items():
            frame = pd.DataFrame({"id": part["id"], "question": part["question"], "answer": part["answer"],
                                  "prediction": self.predictions(name)})
            scored = score_frame(name, frame, protocol="ecgbench")
            figures = {k: float(v) for k, v in scored.items() if k in keys and isinstance(v, (int, float))}
            out.update({f"{name}/{k}": v for k, v in figures.items()})
            if name == self.headline:
                out.update(figures)
                per_class = (scored.get("ecgbench") or {}).get("per_class") or {}
                out.update({f"f1_{c}": float(m["f1"]) for c, m in per_class.items() if "f1" in m})
        return out

