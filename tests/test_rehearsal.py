"""The rehearsal: the README's ECGInstruct path end to end on a scaled-down real SmolVLM (the real Idefics3 classes,
the real SmolVLM-256M-Instruct processor, tokenizer, chat template and image splitting; 2 vision and 2 text layers
of width 64), with every artefact on a real S3 server (moto):

    ECGInstruct-format JSON (list images, multi-turn, three tasks, a record whose image path leaves the root)
    -> ecgvlm prepare --source ecginstruct -> LoRA with the shipped cluster config on 2 Ray Train workers,
    streamed, checkpointed -> export (LoRA merged) -> evaluate (predictions, metrics, report) -> serve
    (/v1/diagnose) -> score (the same F1 as the report's metrics).

Credentials and the S3 endpoint reach every process (the driver, Ray Data tasks, Ray Train workers, predictor
actors, Serve replicas) through the ordinary AWS variables.

Training streams (``--cache stream``): each epoch re-encodes the 17-tile rows (~13 MiB each) in a CPU actor that
loads the processor only. The bound on the object store is shown by tests/test_train_streaming.py, where rows
are small beside the store (a 13 MiB row is a pipeline's whole working set in a 100 MiB store).
One cluster for the module, S3 first (Ray's workers inherit the AWS variables at start-up).
"""

from __future__ import annotations

import json
import time

import pytest
import requests
from conftest import REPO, free_port

pytestmark = pytest.mark.slow
SCALED = ("{vision_config: {num_hidden_layers: 2, hidden_size: 64, intermediate_size: 128, num_attention_heads: 2},"
          " text_config: {num_hidden_layers: 2, hidden_size: 64, intermediate_size: 128, num_attention_heads: 2,"
          " num_key_value_heads: 1, head_dim: 32}}")
CODE15_Q = ("<image>\nPlease identify all the diagnoses that fit this ECG from the following options: "
            "1dAVb (1st degree AV block), RBBB (right bundle branch block), LBBB (left bundle branch block), "
            "SB (sinus bradycardia), ST (sinus tachycardia), AF (atrial fibrillation). Separate multiple "
            "answers with a semicolon. Only answer based on the given options without any explanation.")
ECGQA_Q = ("<image>\nDoes this ECG show symptoms of non-diagnostic t abnormalities? Options: yes, no, not sure. "
           "Only answer based on the given Options without any explanation.")
REPORT_Q = "<image>\nWrite a report of this 12-lead ECG, describing rhythm, axis, intervals and morphology."


def _keys(endpoint: str, prefix: str) -> list[str]:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint)
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket="ecg", Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def _turns(*texts):
    return [{"from": "human" if k % 2 == 0 else "gpt", "value": t} for k, t in enumerate(texts)]


def make_instruct(root, n: int = 15) -> str:
    """``n`` records of three tasks (code15, ecgqa, free-text MIMIC reports with a follow-up turn), the images
    as lists as ECGInstruct has them, plus one record whose image path climbs out of the dataset root.

    15 records: 20 rows, of which the val share of ``prepare`` holds 4 (one of each task, and a follow-up turn) and
    train 16, the 4 steps of 4 rows that the rehearsal trains: each 17-tile row costs seconds to encode and predict.
    """
    from ecg.render import render, to_bytes
    from ecg.synth import generate
    from ecgtasks import CODE15

    (root / "images").mkdir(parents=True)
    records = []
    for k, rec in enumerate(generate(n, seed=21)):
        (root / "images" / f"r{k}.png").write_bytes(to_bytes(render(rec)))  # 1100 x 850: 17 tiles when split
        if k % 3 == 0:
            rid, turns = f"code15-{k}", _turns(CODE15_Q, CODE15.format_answer(rec.labels))
        elif k % 3 == 1:
            rid, turns = f"ecgqa-{k}", _turns(ECGQA_Q, "no" if k % 2 else "yes")
        else:
            rid, turns = f"mimic-{k}", _turns(REPORT_Q, "Sinus rhythm.", "What is the heart rate?", "About 70 bpm.")
        records.append({"id": rid, "image": [f"images/r{k}.png"], "conversations": turns})
    records.append({"id": "climb", "image": ["../outside.png"], "conversations": _turns(CODE15_Q, "AF")})
    (root.parent / "outside.png").write_bytes((root / "images" / "r0.png").read_bytes())
    path = root / "ECGInstruct.json"
    path.write_text(json.dumps(records))
    return str(path)


@pytest.fixture(scope="module")
def cluster(s3_server):
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=True, configure_logging=False)
    yield s3_server
    ray.shutdown()


def test_ecginstruct_to_served_diagnosis_on_the_real_processor(cluster, smolvlm_dir, tmp_path, capsys):
    from ecg import storage
    from pipelines import evaluate, prepare, score, train
    from vlm.load import load_processor
    from vlm.prompt import chat_prompt

    start = time.perf_counter()
    data, run, out = "s3://ecg/instruct", "s3://ecg/runs/rehearsal", "s3://ecg/eval/rehearsal"
    stages = []  # (stage, seconds since the start): printed at the end, to see where the rehearsal's time goes

    def lap(name):
        stages.append((name, time.perf_counter() - start))

    path = make_instruct(tmp_path / "ECGInstruct")
    # the README's command, with a val share that leaves this small file a few val rows
    assert prepare.main(["--source", "ecginstruct", "--path", path, "--out", data, "--split", "train=0.8,val=0.2"]) == 0
    lap("prepare")
    manifest = json.loads(storage.read_text(f"{data}/_manifest.json"))
    assert manifest["rows"] == 15 + 5 and manifest["failed"] == 1  # 5 MIMIC records have a second turn
    assert [f["id"] for f in manifest["failures"]] == ["climb"]
    tasks = {t: sum(per.values()) for t, per in manifest["counts"]["tasks"].items()}
    assert tasks == {"code15": 5, "ecgqa": 5, "freetext": 10}
    assert manifest["counts"]["splits"] == {"train": 16, "val": 4}
    assert {t: per.get("val") for t, per in manifest["counts"]["tasks"].items()} == {"code15": 1, "ecgqa": 1,
                                                                                     "freetext": 2}

    # the README's training command (the shipped 4-GPU LoRA config), on this machine's CPUs and the scaled model
    assert train.main(["--config", str(REPO / "configs/train-ecginstruct-lora-cluster.yaml"),
                       "--model", f"random:{smolvlm_dir}", "--config-overrides", SCALED, "--data", data,
                       "--out", run, "--use-gpu", "false", "--num-workers", "2", "--cpus-per-worker", "0.5",
                       "--threads-per-worker", "1", "--encode-actors", "1", "--batch-size", "1", "--cache", "stream",
                       "--grad-accum", "2", "--max-steps", "4", "--epochs", "null", "--checkpoint-every", "4",
                       "--validate-every", "4", "--val-rows", "4", "--log-every", "1",
                       "--gradient-checkpointing", "true"]) == 0
    lap("train")
    summary = json.loads(storage.read_text(f"{run}/train_summary.json"))
    run_keys = _keys(cluster, "runs/rehearsal/")
    assert any("/checkpoints/" in k for k in run_keys), run_keys[:20]
    export_files = {k.rsplit("/", 1)[-1] for k in run_keys if k.startswith("runs/rehearsal/export/")}
    assert {"config.json", "model.safetensors", "ecgvlm.json"} <= export_files, export_files  # LoRA merged
    assert summary["step"] == 4 and summary["workers"] == 2 and summary["ingest"] == "stream"
    assert summary["images"]["splitting"] is True and summary["failed_rows"] == 0
    losses = [loss for _, loss, _ in summary["losses"]]
    assert len(losses) == 4 and all(loss == loss for loss in losses)
    assert summary["validation"]["rows"] >= 1 and any("/" in k for k in summary["validation"])  # per task

    export = f"{run}/export"
    loaded = load_processor(export)
    assert loaded.images.splitting is True and "as trained" in loaded.images_from
    import pyarrow.parquet as pq

    # the README's evaluation command: the export's image contract is used without being asked for
    assert evaluate.main(["--model", export, "--data", data, "--split", "val", "--out", out, "--batch-size", "2"]) == 0
    lap("evaluate")
    run_info = json.loads(storage.read_text(f"{out}/run.json"))
    assert run_info["images"]["splitting"] is True and "as trained" in run_info["images"]["from"]
    fs, pred_path = storage.resolve(f"{out}/predictions")
    predictions = pq.ParquetDataset(pred_path, filesystem=fs).read().to_pandas()
    val = pq.ParquetDataset(storage.resolve(f"{data}/val")[1], filesystem=fs).read().to_pandas()
    assert sorted(predictions["id"]) == sorted(val["id"]) and predictions["error"].isna().all()
    metrics = json.loads(storage.read_text(f"{out}/metrics.json"))
    assert {"report.md", "report.html"} <= {k.rsplit("/", 1)[-1] for k in _keys(cluster, "eval/rehearsal/")}
    import io

    from PIL import Image

    from vlm.prompt import row_history

    def prompt_tokens(row, splitting: bool) -> int:  # what the real processor makes of this row
        proc = load_processor(export, image_splitting=splitting)
        page = Image.open(io.BytesIO(row["image"])).convert("RGB")
        text = chat_prompt(proc.processor, row["question"], row_history(row["meta"]))
        return int(proc.processor(text=[text], images=[[page]], return_tensors="pt")["input_ids"].shape[1])

    first = val.iloc[0]
    split_tokens, whole_tokens = prompt_tokens(first, True), prompt_tokens(first, False)
    assert split_tokens - whole_tokens > 16 * 64  # 17 tiles of 64 image tokens instead of 1
    got = predictions.set_index("id").loc[first["id"], "prompt_tokens"]
    assert got == split_tokens

    # the same export served: /v1/diagnose builds the same 17-tile prompt
    from ray import serve

    from serving.app import build_app
    from serving.config import AppConfig

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        # the page gate flags rather than refuses here: this chain is about the model, and the gate still refuses
        # some noisy synthetic pages (tests/test_ecg_pagegate.py measures it)
        app = AppConfig(model=export, predictor={"num_cpus": 0.5, "max_replicas": 1}, ingress={"num_cpus": 0.1},
                        page_gate={"mode": "flag"})
        serve.run(build_app(app), name="rehearsal", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        health = requests.get(f"{url}/healthz", timeout=60).json()
        assert health["images"]["splitting"] is True
        reply = requests.post(f"{url}/v1/diagnose", files={"file": ("page.png", first["image"], "image/png")},
                              data={"task": "code15", "question": CODE15_Q}, timeout=120)
        assert reply.status_code == 200, reply.text
        expected = prompt_tokens({"image": first["image"], "question": CODE15_Q, "meta": None}, True)
        assert reply.json()["prompt_tokens"] == expected > prompt_tokens({**first, "question": CODE15_Q,
                                                                          "meta": None}, False) + 16 * 64
    finally:
        serve.shutdown()

    lap("serve")
    capsys.readouterr()
    assert score.main(["--task", "code15", "--references", f"{data}/val", "--predictions", f"{out}/predictions",
                       "--json"]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert scored["n"] == int((val["task"] == "code15").sum()) == metrics["code15"]["n"]
    assert scored["f1"] == metrics["code15"]["f1"]
    with capsys.disabled():
        lap("score")
        print("\nrehearsal wall time " + ", ".join(f"{name} {t:.0f} s" for name, t in stages))
