"""Default text encoder (packaged MiniLM) on real CT-RATE reports: normalisation, determinism, long-text modes."""

from __future__ import annotations

import numpy as np
import pytest

from ctrag.encoders.long_text import chunk_texts, mean_by_owner
from ctrag.errors import InvalidInputError


def test_vectors_are_unit_norm_float32(minilm, ct_rate_reports):
    emb = minilm.encode_text(ct_rate_reports[:8])
    assert emb.shape == (8, 384) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert minilm.dim == 384


def test_deterministic_and_batch_size_invariant(minilm, ct_rate_reports):
    texts = ct_rate_reports[:4]
    a = minilm.encode_text(texts, batch_size=4)
    b = minilm.encode_text(texts, batch_size=4)
    c = minilm.encode_text(texts, batch_size=1)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, c, atol=1e-5)
    # order is preserved: encoding the reversed list gives the reversed rows
    np.testing.assert_allclose(minilm.encode_text(texts[::-1], batch_size=4), a[::-1], atol=1e-5)


def test_similar_texts_are_closer_than_unrelated(minilm):
    emb = minilm.encode_text(
        [
            "Bilateral pleural effusion is present.",
            "There is fluid in both pleural spaces.",
            "The liver and spleen are normal in size.",
        ]
    )
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.1


def test_chunk_mean_differs_only_for_long_reports(minilm, minilm_chunk, ct_rate_reports):
    lengths = np.array(minilm.count_tokens(ct_rate_reports))
    texts = [ct_rate_reports[i] for i in np.argsort(lengths)[[0, 1, -2, -1]]]
    trunc = minilm.encode_text(texts)
    mean = minilm_chunk.encode_text(texts)
    np.testing.assert_allclose(np.linalg.norm(mean, axis=1), 1.0, atol=1e-5)
    cos = np.sum(trunc * mean, axis=1)
    short_fit = np.array(minilm.count_tokens(texts)) <= minilm.max_tokens
    assert np.all(cos[short_fit] > 1 - 1e-5)
    assert np.all(cos[~short_fit] < 0.9999)
    # chunk-mean of a long report equals the renormalised mean of its windows, encoded separately
    chunks, owner = chunk_texts(texts[-1:], minilm.count_tokens, minilm.max_tokens)
    manual = mean_by_owner(minilm.encode_text(chunks), owner, 1)
    np.testing.assert_allclose(mean[-1:], manual, atol=1e-5)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("a single string", "single str"),
        (["fine", "   "], "text #1 is empty"),
        (["fine", None], "text #1 is NoneType"),
    ],
)
def test_bad_text_input_names_the_problem(minilm, bad, message):
    with pytest.raises(InvalidInputError, match=message):
        minilm.encode_text(bad)


def test_empty_list_gives_empty_matrix(minilm):
    assert minilm.encode_text([]).shape == (0, 384)


def test_unknown_long_text_mode_is_rejected():
    from ctrag.encoders import create_encoder

    with pytest.raises(InvalidInputError, match="long_text must be one of"):
        create_encoder("minilm", long_text="summarise")


def test_truncation_is_logged_with_the_dropped_token_count(minilm, minilm_chunk, ct_rate_reports, caplog):
    """Real CT-RATE reports are longer than MiniLM's window: truncate mode says so (and how much it cut)."""
    counts = minilm.count_tokens(ct_rate_reports)
    limit = minilm.max_tokens
    long = [t for t, n in zip(ct_rate_reports, counts, strict=True) if n > limit]
    assert long, "the shipped sample should hold reports over the window"
    n = minilm.count_tokens(long[:1])[0]
    with caplog.at_level("WARNING", logger="ctrag.encoders.text"):
        minilm.encode_text(long[:1])
    assert len(caplog.records) == 1
    message = caplog.records[0].getMessage()
    assert f"the text has {n} tokens, it reads {limit}; {n - limit} token(s) dropped" in message
    caplog.clear()
    with caplog.at_level("WARNING", logger="ctrag.encoders.text"):
        minilm.encode_text(ct_rate_reports)  # one warning per call, summing what every text lost
    dropped = sum(c - limit for c in counts if c > limit)
    assert len(caplog.records) == 1 and f"{len(long)} of {len(ct_rate_reports)} texts" in caplog.text
    assert f"{dropped} token(s) dropped" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="ctrag.encoders.text"):
        minilm.encode_text(["Bilateral pleural effusion."])  # fits: nothing to say
        minilm_chunk.encode_text(long)  # chunk-mean reads all of every report: nothing is cut
    assert caplog.records == []


def test_mean_pooling_folder_runs_without_sentence_transformers_and_gives_its_vectors(minilm, ct_rate_reports):
    """The packaged MiniLM is "transformer -> mean pooling -> L2 norm": run with transformers alone, its vectors
    equal the sentence-transformers package's on real reports (so the fingerprint may stay the same)."""
    from sentence_transformers import SentenceTransformer

    from ctrag.encoders.text import _MeanPoolModel, mean_pooling_layout

    assert isinstance(minilm.model, _MeanPoolModel)
    assert mean_pooling_layout(minilm.model_path) == {"max_seq_length": 256, "do_lower_case": False}
    texts = [*ct_rate_reports[:12], "  Short text with spaces.  "]
    reference = SentenceTransformer(str(minilm.model_path), device="cpu", local_files_only=True)
    expected = reference.encode(texts, batch_size=5, convert_to_numpy=True, normalize_embeddings=True)
    ours = minilm.encode_text(texts, batch_size=5)
    assert float((ours * expected).sum(axis=1).min()) > 0.99999
    assert minilm.settings() == {"kind": "sentence-transformers", "max_seq_length": 256}


def test_other_sentence_transformers_layouts_are_not_taken_for_mean_pooling(minilm, tmp_path):
    import json
    import shutil

    from ctrag.encoders.text import mean_pooling_layout

    folder = tmp_path / "cls"
    shutil.copytree(minilm.model_path / "1_Pooling", folder / "1_Pooling")
    for name in ("modules.json", "sentence_bert_config.json"):
        shutil.copy(minilm.model_path / name, folder / name)
    assert mean_pooling_layout(folder) is not None
    config = json.loads((folder / "1_Pooling" / "config.json").read_text())
    config.update(pooling_mode_cls_token=True, pooling_mode_mean_tokens=False)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(config))
    assert mean_pooling_layout(folder) is None  # CLS pooling: left to the sentence-transformers package
    (folder / "modules.json").write_text("[]")
    assert mean_pooling_layout(folder) is None


def test_default_encoder_does_not_import_sentence_transformers():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from ctrag.encoders.factory import create_encoder\n"
        "made = create_encoder('minilm')\n"
        "enc = made[0] if isinstance(made, tuple) else made\n"
        "assert enc.encode_text(['No pleural effusion.']).shape == (1, 384)\n"
        "assert 'sentence_transformers' not in sys.modules, 'sentence_transformers imported'\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
