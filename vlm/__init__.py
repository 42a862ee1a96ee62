"""The model layer: presets, prompts, batched generation, label scoring, training collate, export. No Ray here;
the Ray stages around the model (``stages.evaluation``, ``stages.ingest``, ``stages.raytrain``) import it where they run.

Example::

    import vlm
    loaded = vlm.load("tiny")                       # or a HF id, a folder, "random:PATH"; adapter=...
    predictor = vlm.Predictor("tiny")
    predictor.generate([page], [question], max_new_tokens=24)
    rows = vlm.predict_rows(predictor, samples_df)  # ecg/rows.py prediction rows
    batch = vlm.training.collate(loaded, [page], [question], ["SB; 1dAVb"])
    vlm.export(loaded, "out/export")                # vlm.load("out/export") loads it back
"""

from vlm import training
from vlm.batch import predict_rows
from vlm.export import export
from vlm.load import ImagePrep, Loaded, load
from vlm.predict import Predictor
from vlm.tiny import TinySpec

__all__ = ["ImagePrep", "Loaded", "Predictor", "TinySpec", "export", "load", "predict_rows", "training"]
