"""The Ray stages: the model layer (``vlm``) and the data layer (``ecg``) run on Ray. Batch evaluation on Ray Data
(``stages.evaluation``), training ingest (``stages.ingest``) and the Ray Train worker (``stages.raytrain``).
The jobs in ``pipelines/`` build these from their configs; benchmarks import them too, which is why they are a
package of their own and not part of ``pipelines`` (nothing imports pipelines). Everything below this layer
(``ecgtasks``, ``ecgconfig``, ``ecg``, ``metrics``, ``vlm``) imports no Ray.

Example::

    from stages.evaluation import build_dataset, run_predictions
    ds = build_dataset(cfg, done)                   # cfg: ecgvlm evaluate's EvaluateConfig
"""
