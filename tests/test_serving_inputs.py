"""serving/inputs.py and serving/chat.py without Ray: real files in every format, real bad inputs.

The upload builders here (``signal_uploads``, ``bomb_png``) are reused by tests/test_serving.py.
"""

from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np
import pytest

from serving.chat import completion, error_body, parse_chat
from serving.config import AppConfig, load_serve_yaml
from serving.inputs import InputError, Limits, check_image, check_fs, parse_data_uri, parse_upload, sniff

LIMITS = Limits()


def synth_record():
    from ecg.synth import generate

    return next(generate(1, seed=3))  # (12, 5000) mV at 500 Hz, 10 s


def page_png() -> bytes:
    from ecg.samples import RenderOptions, render_bytes

    return render_bytes(synth_record(), RenderOptions())


def signal_uploads(tmp_path) -> dict[str, tuple[list[tuple[str, bytes]], dict]]:
    """One real 12-lead record as every signal format: kind -> (files, form fields)."""
    import h5py
    import pandas as pd
    import wfdb

    rec = synth_record()
    csv = pd.DataFrame(rec.signal.T, columns=list(rec.leads)).to_csv(index=False).encode()
    npy = io.BytesIO()
    np.save(npy, rec.signal)  # (12, 5000), mV
    wfdb.wrsamp("ecg01", fs=rec.fs, units=["mV"] * 12, sig_name=list(rec.leads),
                p_signal=rec.signal.T.astype(np.float64), fmt=["16"] * 12, write_dir=str(tmp_path))
    hea, dat = (tmp_path / "ecg01.hea").read_bytes(), (tmp_path / "ecg01.dat").read_bytes()
    # CODE-15 layout: (exams, 4096, 12) at 400 Hz; a 10 s exam is 4000 samples zero-padded 48 + 48
    from ecg.readers import resample

    at400 = resample(rec, 400.0).signal  # (12, 4000)
    tracings = np.zeros((2, 4096, 12), np.float32)
    tracings[1, 48:4048] = at400.T
    with h5py.File(tmp_path / "exams.hdf5", "w") as f:
        f["tracings"] = tracings
        f["exam_id"] = np.array([11, 12])
    return {
        "csv": ([("ecg.csv", csv)], {"sampling_rate": "500"}),
        "npy": ([("ecg.npy", npy.getvalue())], {"fs": "500"}),
        "wfdb": ([("ecg01.hea", hea), ("ecg01.dat", dat)], {}),
        "hdf5": ([("exams.hdf5", (tmp_path / "exams.hdf5").read_bytes())], {"index": "1"}),
    }


def bomb_png(width: int = 14000, height: int = 14000) -> bytes:
    """A valid 1-bit PNG of width x height white pixels: ~25 KB that inflate to 196 megapixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + b"\xff" * ((width + 7) // 8)  # filter byte + packed bits
    z = zlib.compressobj(6)
    body = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1 bit, grayscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def uploads(tmp_path_factory):
    return signal_uploads(tmp_path_factory.mktemp("uploads"))


def raises(status: int, match: str, fn, *args, **kw) -> InputError:
    with pytest.raises(InputError, match=match) as info:
        fn(*args, **kw)
    assert info.value.status == status, info.value
    return info.value


def test_sniff_by_magic_then_extension():
    assert sniff("x.bin", b"\x89PNG\r\n\x1a\n....") == "png"
    assert sniff("x", b"\xff\xd8\xff\xe0....") == "jpeg"
    assert sniff("x.dat", b"\x00\x01") == "dat"
    assert sniff("a.hea", b"a 12 500 5000\n") == "hea"
    assert sniff("a.csv", b"I,II\n0.1,0.2\n") == "csv"
    assert sniff("a.dat", b"\x00" * 128 + b"DICM\x02\x00") == "dicom"  # content first, extension after
    assert sniff("ecg.txt", b'\xef\xbb\xbf<?xml version="1.0"?><RestingECG/>') == "xml"
    raises(415, "neither a PNG/JPEG image nor a signal", sniff, "x.bin", b"\x00\x01\x02garbage")
    raises(415, "neither", sniff, "notes.txt", b"hello world")


def test_check_image_reads_header_and_refuses_a_bomb_before_decoding():
    info = check_image(page_png(), LIMITS)
    assert (info["width"], info["height"], info["format"]) == (1100, 850, "png")
    bomb = bomb_png()  # so large that PIL's own guard fires inside Image.open
    assert len(bomb) < 200_000
    raises(413, "decompression bomb .* the limit is 20000000 pixels", check_image, bomb, LIMITS)
    err = raises(413, "6000x6000 = 36000000 pixels, over the limit", check_image, bomb_png(6000, 6000), LIMITS)
    assert err.field == "image"
    raises(400, "unreadable image, does not decode as PNG/JPEG", check_image, page_png()[:2000], LIMITS)  # truncated
    raises(400, "empty", check_image, b"", LIMITS)
    gif = io.BytesIO()
    from PIL import Image

    Image.new("RGB", (10, 10)).save(gif, format="GIF")
    raises(400, "unreadable image, does not decode as PNG/JPEG", check_image, gif.getvalue(), LIMITS)


def test_data_uri_and_sampling_rate():
    png = page_png()
    assert parse_data_uri("data:image/png;base64," + base64.b64encode(png).decode(), LIMITS) == png
    raises(400, "URLs are not fetched", parse_data_uri, "https://example.com/ecg.png", LIMITS)
    raises(400, "not valid base64", parse_data_uri, "data:image/png;base64,@@@", LIMITS)
    assert check_fs(500, LIMITS) == 500.0
    for bad in (0, -5, float("nan"), 1e6):
        raises(422, "impossible for an ECG", check_fs, bad, LIMITS)


def test_image_upload_passes_through_unchanged():
    png = page_png()
    up = parse_upload([("ecg.png", png)], {}, LIMITS)
    assert (up.kind, up.image, up.task, up.meta) == ("png", png, "code15", {"width": 1100, "height": 850})
    assert up.question.startswith("<image>")
    up = parse_upload([("ecg.png", png)], {"task": "code15-test", "question": "Which rhythm?"}, LIMITS)
    assert (up.task, up.question) == ("code15", "Which rhythm?")


def test_every_signal_format_is_rendered_as_the_batch_job_does(uploads):
    from ecg.samples import RenderOptions, render_bytes

    expected = render_bytes(synth_record(), RenderOptions())  # the batch job's page of the same record
    for kind, (files, fields) in uploads.items():
        up = parse_upload(files, fields, LIMITS)
        assert up.kind == kind and up.image.startswith(b"\x89PNG"), kind
        assert up.meta["leads"] == 12, (kind, up.meta)
        if kind in ("csv", "npy", "wfdb"):
            assert up.meta["fs"] == 500.0 and up.meta["seconds"] == 10.0
        if kind in ("npy", "csv"):
            assert up.image == expected, kind  # same samples, same renderer -> the same bytes
    assert parse_upload(*uploads["hdf5"], LIMITS).meta["fs"] == 400.0


def test_bad_signal_uploads_say_what_is_wrong(uploads):
    (name, csv), = uploads["csv"][0]
    raises(422, "sampling_rate .Hz. is required", parse_upload, [(name, csv)], {}, LIMITS)
    raises(422, "sampling_rate 0.0 Hz is impossible", parse_upload, [(name, csv)], {"sampling_rate": "0"}, LIMITS)
    raises(422, "must be a number", parse_upload, [(name, csv)], {"sampling_rate": "fast"}, LIMITS)
    five = "I,II,III,aVR,aVL"
    raises(422, r"signal has 5 leads .* expected \[12\]", parse_upload, [(name, csv)],
           {"sampling_rate": "500", "leads": five}, LIMITS)
    npy = io.BytesIO()
    np.save(npy, synth_record().signal[:5])  # (5, 5000)
    raises(422, "no axis of 12 leads", parse_upload, [("x.npy", npy.getvalue())], {"fs": "500"}, LIMITS)
    half_second = b"\n".join(csv.split(b"\n")[:251])  # header + 250 samples at 500 Hz
    raises(422, r"lasts 0\.50 s; allowed 2-120 s", parse_upload, [(name, half_second)], {"fs": "500"}, LIMITS)
    raises(400, "exactly one .hea and one .dat", parse_upload, uploads["wfdb"][0][:1], {}, LIMITS)
    raises(422, "cannot read the hdf5 upload", parse_upload, uploads["hdf5"][0], {"index": "7"}, LIMITS)
    raises(400, "empty upload", parse_upload, [], {}, LIMITS)
    raises(400, "empty upload", parse_upload, [("ecg.png", b"")], {}, LIMITS)
    raises(400, "unknown form field", parse_upload, [(name, csv)], {"colour": "red"}, LIMITS)
    raises(422, "unknown task", parse_upload, [(name, csv)], {"task": "nope"}, LIMITS)
    png = page_png()
    raises(400, "upload one ECG at a time", parse_upload, [("a.png", png), (name, csv)], {"fs": "500"}, LIMITS)


def chat_body(png: bytes, **extra) -> dict:
    url = "data:image/png;base64," + base64.b64encode(png).decode()
    content = [{"type": "text", "text": "Which rhythm is this?"}, {"type": "image_url", "image_url": {"url": url}}]
    return {"model": "tiny", "messages": [{"role": "user", "content": content}], **extra}


def test_parse_chat_and_completion_shape():
    png, kw = page_png(), dict(served="tiny", default_question="<image>\nQ?", default_tokens=24)
    req = parse_chat(chat_body(png, max_tokens=8), LIMITS, **kw)
    assert (req["image"], req["question"], req["max_new_tokens"]) == (png, "Which rhythm is this?", 8)
    no_text = chat_body(png)
    no_text["messages"][0]["content"] = no_text["messages"][0]["content"][1:]
    assert parse_chat(no_text, LIMITS, **kw)["question"] == "<image>\nQ?"
    raises(404, "not served here", parse_chat, chat_body(png) | {"model": "gpt-4o"}, LIMITS, **kw)
    raises(400, "exactly one image_url", parse_chat, {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]},
           LIMITS, **kw)
    raises(400, "stream=true", parse_chat, chat_body(png, stream=True), LIMITS, **kw)
    raises(400, "over the limit of 256", parse_chat, chat_body(png, max_tokens=10_000), LIMITS, **kw)
    raises(400, "invalid chat request at messages", parse_chat, {"model": "tiny", "messages": []}, LIMITS, **kw)
    raises(413, "pixels, over the limit", parse_chat, chat_body(bomb_png(6000, 6000)), LIMITS, **kw)
    out = completion("SB", model="tiny", prompt_tokens=90, completion_tokens=1, max_new_tokens=8)
    assert out["object"] == "chat.completion" and out["choices"][0]["message"] == {"role": "assistant", "content": "SB"}
    assert out["choices"][0]["finish_reason"] == "stop" and out["usage"]["total_tokens"] == 91
    assert error_body("bad", status=422, field="file")["error"]["param"] == "file"


def test_shipped_serve_config_and_cli_overrides():
    from pipelines.serve import parse_args

    http, cfg = load_serve_yaml("serving/config.yaml")
    assert http == {"host": "127.0.0.1", "port": 8000} and cfg.model == "tiny" and cfg.batching.enabled
    job = parse_args(["--config", "serving/config.yaml", "--port", "8123", "--no-batching", "--max-replicas", "1"])
    assert (job.host, job.port, job.app.batching.effective(), job.app.predictor.max_replicas) == \
        ("127.0.0.1", 8123, (1, 0.0), 1)
    assert job.app.limits == cfg.limits
    with pytest.raises(ValueError):
        AppConfig.model_validate({"model": "tiny", "batchng": {}})  # a typo is an error, not a silent default


def test_parse_labels_per_task_kind():
    from ecgtasks import get_task
    from serving.answers import parse_labels

    q = get_task("code15").question
    assert parse_labels("code15", q, "SB; 1dAVb") == ["1dAVb", "SB"]  # the task's label order
    assert "ST" not in parse_labels("code15", q, "ST segment normal")  # a segment, not sinus tachycardia
    assert parse_labels("code15", q, "") == []
    assert parse_labels("csn", get_task("csn").question, "The answer is C") == ["C"]
    assert parse_labels("ecgqa", "Options: sinus rhythm, atrial fibrillation", "atrial fibrillation") == \
        ["atrial fibrillation"]
    assert parse_labels("ptbxl-report", "", "sinus rhythm") == []


def clinical_uploads(real_ecgs) -> dict:
    """Real exports as /v1/diagnose uploads (names that say nothing: the kind comes from content), and an aECG."""
    from test_ecg_clinical import CARDIOSOFT, MORTARA, MUSE, SIERRA, aecg_xml

    from ecg.clinical import read_clinical

    mortara = read_clinical(str(real_ecgs / MORTARA))
    return {"dicom": ("upload", (real_ecgs / MORTARA).read_bytes()),
            "muse": ("upload.dat", (real_ecgs / MUSE).read_bytes()),
            "cardiosoft": ("a.xml", (real_ecgs / CARDIOSOFT).read_bytes()),
            "sierra": ("b.XML", (real_ecgs / SIERRA).read_bytes()),
            "aecg": ("c.xml", aecg_xml(mortara.signal[:, ::2] * 1000, 500.0, ["Sinus rhythm"]))}


def test_clinical_exports_are_drawn_and_their_statements_kept_aside(real_ecgs):
    for fmt, (name, data) in clinical_uploads(real_ecgs).items():
        up = parse_upload([(name, data)], {}, Limits())
        assert up.kind == ("dicom" if fmt == "dicom" else "xml") and up.image[:4] == b"\x89PNG", fmt
        assert up.meta["format"] == fmt and up.meta["leads"] == 12 and up.meta["statements"], fmt
        assert up.question == parse_upload([(name, data)], {}, Limits()).question  # the task's, not the device's
        assert not any(s in up.question for s in up.meta["statements"])
    with pytest.raises(InputError, match="XML root <Invoice> is none of") as err:
        parse_upload([("x.xml", b"<Invoice><Total>3</Total></Invoice>")], {}, Limits())
    assert err.value.status == 422
