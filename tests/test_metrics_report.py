"""Reports: Markdown and self-contained HTML, to a folder and to a real S3 server."""

import json

import boto3
import pandas as pd
import pytest

from metrics.report import format_table, published_table, write_report
from metrics.score import score_frame


def results():
    frame = pd.DataFrame({"id": ["a", "b", "c", "d"], "answer": ["SB", "AF", "AF; RBBB", "NORM"],
                          "prediction": ["SB", "AF", "RBBB", "ST"],
                          "label_scores": [json.dumps({"AF": s}) for s in (0.1, 0.8, 0.6, 0.3)]})
    return {"code15": score_frame("code15", frame)}, frame


def test_local_report(tmp_path):
    res, frame = results()
    uris = write_report(res, str(tmp_path), samples=frame)
    md = open(uris["markdown"]).read()
    html = open(uris["html"]).read()
    assert "published, not rerun here" in md and "PULSE-7B" in md and "| code15 |" in md
    assert html.count("data:image/png;base64,") == 2  # per-class F1 bars and ROC from label_scores
    assert "AF; RBBB" in html and "<script" not in html  # samples with gold; nothing external
    assert "code15" in format_table(res) and "ours, this run" in published_table(res)


def test_s3_report(s3_server):
    res, _ = results()
    uris = write_report(res, "s3://ecg/runs/r1")
    assert uris == {"markdown": "s3://ecg/runs/r1/report.md", "html": "s3://ecg/runs/r1/report.html"}
    s3 = boto3.client("s3", endpoint_url=s3_server)
    body = s3.get_object(Bucket="ecg", Key="runs/r1/report.html")["Body"].read().decode()
    assert "published, not rerun here" in body


@pytest.mark.parametrize("labels", [
    ["1dAVb", "RBBB", "LBBB", "SB", "ST", "AF", "NORM", "ABNORMAL"],  # code15
    ["1dAVb", "RBBB", "LBBB", "SB", "ST", "AF", "NORM", "ABNORMAL", "I-AVB", "PAC", "PVC", "STD", "STE", "MI",
     "STTC", "CD", "HYP"],  # a run over several label spaces
])
def test_per_class_bar_labels_do_not_overlap(labels):
    """Every tick label clear of its neighbours, however many classes."""
    from metrics.report import class_f1_figure

    fig = class_f1_figure([{"label": lab, "f1": 50.0} for lab in labels], {lab: {"f1": 40.0} for lab in labels})
    fig.canvas.draw()
    ticks = fig.axes[0].get_xticklabels()
    assert [t.get_text() for t in ticks] == labels
    boxes = [t.get_window_extent() for t in ticks]
    for a, b in zip(boxes, boxes[1:]):
        assert not a.overlaps(b), (a, b)
