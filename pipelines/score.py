"""``ecgvlm score``: score predictions against references, by the published ECGBench rules and strictly.

    ecgvlm score --task code15 --references code15-test.json --predictions out/code15-test.jsonl
    ecgvlm score --task code15 --predictions runs/eval/predictions --json --report runs/eval
    ecgvlm score --task csn-test-no-cot --references csn.json --predictions csn.jsonl \
        --random-order benchmark --drawn-before mmmu=12     # csn's random letters as in the reference's whole run
    python -m pipelines.score --config my-score.yaml      # the same fields as ScoreConfig

References: ECGBench records (JSON list / JSONL / Parquet with ``id`` and ``conversations``) or our sample rows;
predictions: the reference output JSONL (``question_id``/``id``, ``text``/``response``) or our prediction rows.
Without ``--references`` the prediction rows' own ``answer`` is the gold. Local paths or ``s3://``.

``score_dataset(uri)`` does the same over millions of prediction rows with Ray Data: each block becomes
per-task counts (``metrics.reduce.stats_table``), merged on the driver; no row is collected.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ScoreConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    task: str = Field(..., description="task name or ECGBench config name, e.g. code15 or code15-test")
    references: str | None = Field(None, description="references file/folder (local or s3://); None: use the "
                                                     "predictions' own `answer` column")
    predictions: str = Field(..., description="predictions file/folder (local or s3://)")
    protocol: Literal["ecgbench", "strict", "both", "smolvlm-study", "all"] = Field(
        "both", description="which protocol(s): ecgbench, strict, both (the two), smolvlm-study (the prior study's "
                            "CODE-15 evaluator) or all (the three)")
    json_out: bool = Field(False, description="print one JSON object instead of the table (also --json)")
    report: str | None = Field(None, description="folder (local or s3://) for report.md and report.html")
    seed: int = Field(0, description="bootstrap seed of the strict protocol's 95% intervals")
    judge: str | None = Field(None, description="openai:NAME: an LLM judge scores free-text reports (ptbxl-report) "
                                                "or arena dialogues (arena), each task with its own rubric")
    judge_base: str | None = Field(None, description="base URL of the judge's chat-completions API")
    judge_key_env: str = Field("OPENAI_API_KEY", description="environment variable holding the judge's API key")
    judge_cache: str | None = Field(None, description="judge reply cache (folder or s3://; default "
                                                      "<report or predictions folder>/judge-cache)")
    judge_concurrency: int = Field(8, ge=1, description="judge requests in flight at once")
    random_order: Literal["task", "benchmark"] = Field(
        "task", description="stream of the ecgbench protocol's random letters for unparsable choice answers: "
                            "`task` = random.seed(42) for this task alone; `benchmark` = the reference's whole "
                            "run, one stream for mmmu, then csn, then g12 (see drawn_before)")
    drawn_before: dict[str, int] = Field(
        default_factory=dict, description="with random_order benchmark: letters drawn by each task before this "
                                          "one in the reference's run (their reported random_letters; 0 if not "
                                          "run): {} for mmmu, mmmu=N for csn, mmmu=N,csn=M for g12")


def parse_args(argv) -> ScoreConfig:
    """``--config FILE.yaml`` then flags (``ecgconfig``); ``--json`` is ``--json-out``."""
    from ecgconfig import load_config

    return load_config(ScoreConfig, argv, prog="ecgvlm score", doc=__doc__, aliases={"json": "json-out"},
                       main=("task", "references", "predictions", "protocol", "json_out", "report"))


def score_files(cfg: ScoreConfig) -> dict:
    """The result dict of one task (``metrics.files.score_files``), with the judge's section when ``--judge``."""
    from metrics.files import score_files as score

    return score(cfg, judge=judge_frame if cfg.judge else None)


def judge_frame(cfg: ScoreConfig, frame) -> dict:
    """The ``judge`` section: ``vlm.remote.judge_rows`` over the joined rows, summarised (metrics/judge.py)."""
    import os
    from urllib.parse import urlparse

    from ecg import storage
    from metrics.judge import rubric, summarize
    from vlm.remote import judge_rows

    rubric_ = rubric(cfg.task)  # ValueError for a task without a rubric
    if not cfg.judge.startswith("openai:") or not cfg.judge_base:
        raise ValueError("--judge takes openai:NAME and needs --judge-base URL")
    key = os.environ.get(cfg.judge_key_env, "")
    if not key and (urlparse(cfg.judge_base).hostname or "") not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError(f"no API key for the judge: set ${cfg.judge_key_env} (or --judge-key-env)")
    base = cfg.report or (cfg.predictions if not cfg.predictions.endswith((".jsonl", ".json", ".parquet"))
                          else os.path.dirname(cfg.predictions) or ".")
    config = {"model": cfg.judge.split(":", 1)[1], "api_base": cfg.judge_base, "concurrency": cfg.judge_concurrency,
              "cache": cfg.judge_cache or storage.join(storage.absolute(base), "judge-cache")}
    rows = judge_rows(frame, config, api_key=key or "unused", task=rubric_.task)
    out = summarize(rows.to_dict("records"), model=cfg.judge, api_base=cfg.judge_base, rubric=rubric_)
    out.update(requests=int(rows["requests"].sum()) if len(rows) else 0,
               cache_hits=int(rows["cache_hit"].sum()) if len(rows) else 0, cache=config["cache"])
    return out


def score_dataset(predictions_uri: str, *, protocol: str = "both", seed: int = 0,
                  batch_size: int | None = None, random_order: str = "task") -> dict:
    """``{task: result}`` over prediction shards (Parquet, PREDICTION_SCHEMA) with Ray Data: per-block
    counts (``map_batches`` of a pure function; ``batch_size`` None = one batch per block), merged in block
    order on the driver. Uses the running Ray cluster (or ``RAY_ADDRESS``), or starts a local one.
    ``random_order="benchmark"``: one letter stream for the choice tasks present, in the reference's order."""
    import ray

    from ecg import storage
    from metrics.inputs import data_files
    from metrics.reduce import merge_table, stats_table
    from metrics.score import finalize_tasks
    from pipelines import launch

    launch.start([{"CPU": 1}], what="ecgvlm score")
    files = data_files(predictions_uri)
    fs, _ = storage.resolve(predictions_uri)
    ctx = ray.data.DataContext.get_current()
    saved, ctx.execution_options.preserve_order = ctx.execution_options.preserve_order, True  # block order =
    try:  # row order, so the reference's random letters are drawn in the same order as by score_frame
        # at least one block per file and per CPU: Ray Data would otherwise pack small shards into one task
        blocks = max(len(files), int(ray.cluster_resources().get("CPU", 1)))
        ds = ray.data.read_parquet([storage.resolve(f)[1] for f in files], filesystem=fs,
                                   override_num_blocks=blocks)
        stats = ds.map_batches(stats_table, batch_format="pandas", batch_size=batch_size)
        merged, failed = merge_table(row for batch in stats.iter_batches(batch_format="pandas", batch_size=None)
                                     for row in batch.to_dict("records"))
    finally:
        ctx.execution_options.preserve_order = saved
    results = finalize_tasks(merged, protocol=protocol, seed=seed, random_order=random_order)
    for task, f in failed.items():
        entry = results.setdefault(task, {"task": task, "n": 0, "warnings": []})
        entry["failed_rows"] = f["rows"]
        entry["warnings"] = entry.get("warnings", []) + [f"{f['rows']} rows could not be scored: {f['errors']}"]
    return results


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    from metrics.report import format_table, write_report

    start = time.perf_counter()
    try:
        result = score_files(cfg)
    except (FileNotFoundError, KeyError, ValueError, ImportError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e  # KeyError's str() adds quotes
        print(f"ecgvlm score: {message}", file=sys.stderr)
        return 2
    samples = result.pop("_samples")
    for w in result["warnings"]:
        print(f"ecgvlm score: warning: {w}", file=sys.stderr)
    if cfg.report:
        result["report"] = write_report({result["task"]: result}, cfg.report, samples=samples)
    if cfg.json_out:
        print(json.dumps(result, default=str))
    else:
        print(format_table({result["task"]: result}))
        print(f"({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
