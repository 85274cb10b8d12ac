"""CT-RATE RadBERT classifier loading and scoring, with a tiny random RoBERTa and a word-level tokenizer built here
(offline: nothing is downloaded; the real encoder and head are user-supplied files of the same layout)."""

from __future__ import annotations

import csv
import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from ctrag.errors import CheckpointMismatchError, WeightsNotFoundError
from ctrag.labels.radbert import MAX_TOKENS, RadBertClassifier

HIDDEN = 16


def _reports(ct_rate_dir: Path, n: int) -> list[str]:
    with open(ct_rate_dir / "val.csv", encoding="utf-8") as fh:
        return [row["report_text"] for row in csv.DictReader(fh)][:n]


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory, ct_rate_dir: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, RobertaConfig, RobertaModel

    folder = tmp_path_factory.mktemp("radbert")
    words = sorted({w for t in _reports(ct_rate_dir, 50) for w in re.findall(r"\w+|[^\w\s]", t.lower())})
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    vocab = {tok: i for i, tok in enumerate(specials + words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", vocab["<s>"]), ("</s>", vocab["</s>"])]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
        model_max_length=MAX_TOKENS,
    )
    fast.save_pretrained(folder)
    config = RobertaConfig(
        vocab_size=len(vocab),
        hidden_size=HIDDEN,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=MAX_TOKENS + 2,
        pad_token_id=vocab["<pad>"],
        bos_token_id=vocab["<s>"],
        eos_token_id=vocab["</s>"],
    )
    torch.manual_seed(0)
    RobertaModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def head_file(tmp_path_factory) -> Path:
    torch.manual_seed(1)
    head = torch.nn.Linear(HIDDEN, 18)
    path = tmp_path_factory.mktemp("head") / "classifier.pt"
    torch.save({f"classifier.{k}": v for k, v in head.state_dict().items()}, path)
    return path


def test_probabilities_are_n_by_18_and_follow_the_head(encoder_dir: Path, head_file: Path, ct_rate_dir: Path) -> None:
    clf = RadBertClassifier.load(encoder_dir, head_file)
    texts = _reports(ct_rate_dir, 3)
    prob = clf.predict_proba(texts)
    assert prob.shape == (3, 18) and np.all((prob > 0) & (prob < 1))
    assert np.ptp(prob, axis=0).max() > 0  # different reports, different probabilities
    np.testing.assert_allclose(clf.predict_proba(texts[:1]), prob[:1], atol=1e-6)  # padding does not leak
    assert np.all(clf.thresholds == 0.5) and len(clf.fingerprint) == 16
    # The head really is applied: negated weights give the complementary probabilities.
    state = torch.load(head_file, weights_only=True)
    neg = head_file.with_name("neg.pt")
    torch.save({k: -v for k, v in state.items()}, neg)
    np.testing.assert_allclose(RadBertClassifier.load(encoder_dir, neg).predict_proba(texts), 1 - prob, atol=1e-6)


def test_strict_keys_refuse_a_head_that_does_not_fit(encoder_dir: Path, head_file: Path, tmp_path: Path) -> None:
    state = torch.load(head_file, weights_only=True)
    renamed = tmp_path / "renamed.pt"
    torch.save({"fc.weight": state["classifier.weight"], "fc.bias": state["classifier.bias"]}, renamed)
    with pytest.raises(CheckpointMismatchError, match=r"missing \['classifier.weight', 'classifier.bias'\]") as info:
        RadBertClassifier.load(encoder_dir, renamed)
    assert "fc.weight" in str(info.value)  # the unexpected keys are listed too
    wrong = tmp_path / "wrong_labels.pt"
    torch.save({"classifier.weight": torch.zeros(14, HIDDEN), "classifier.bias": torch.zeros(14)}, wrong)
    with pytest.raises(CheckpointMismatchError, match="shape mismatches"):
        RadBertClassifier.load(encoder_dir, wrong)
    # A whole-model checkpoint: bert.* keys are loaded strictly too (a missing encoder key is refused) ...
    from transformers import AutoModel

    bert = AutoModel.from_pretrained(str(encoder_dir), local_files_only=True).state_dict()
    full = {f"bert.{k}": v for k, v in bert.items()} | state
    torch.save(full, tmp_path / "full.pt")
    assert RadBertClassifier.load(encoder_dir, tmp_path / "full.pt").predict_proba(["No nodule."]).shape == (1, 18)
    del full["bert.pooler.dense.weight"]
    torch.save(full, tmp_path / "partial.pt")
    with pytest.raises(CheckpointMismatchError, match=r"pooler\.dense\.weight"):
        RadBertClassifier.load(encoder_dir, tmp_path / "partial.pt")
    with pytest.raises(WeightsNotFoundError, match=r"no config\.json"):
        RadBertClassifier.load(tmp_path, head_file)


def test_long_report_is_truncated_with_a_warning(encoder_dir: Path, head_file: Path, ct_rate_dir: Path, caplog) -> None:
    clf = RadBertClassifier.load(encoder_dir, head_file)
    short = _reports(ct_rate_dir, 1)[0]
    long = " ".join([short] * 20)
    assert len(clf.tokenizer(long)["input_ids"]) > MAX_TOKENS
    with caplog.at_level(logging.WARNING, logger="ctrag.labels.radbert"):
        prob = clf.predict_proba([short, long])
    assert prob.shape == (2, 18) and clf.truncated == 1 and "1 of 2 report(s)" in caplog.text
    # What lies after token 512 is not read: appending more text to an already cut report changes nothing.
    np.testing.assert_allclose(clf.predict_proba([long + " pleural effusion"]), prob[1:], atol=1e-6)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ctrag.labels.radbert"):
        clf.predict_proba([short])
    assert clf.truncated == 0 and clf.truncated_total == 2 and not caplog.text


def test_cli_evaluate_reports_with_radbert(encoder_dir: Path, head_file: Path, ct_rate_dir: Path, tmp_path, capsys):
    from ctrag.cli import main

    texts = _reports(ct_rate_dir, 4)
    refs, hyps, out = tmp_path / "refs.jsonl", tmp_path / "hyps.jsonl", tmp_path / "res"
    refs.write_text("".join(json.dumps({"id": str(i), "text": t}) + "\n" for i, t in enumerate(texts)))
    hyps.write_text("".join(json.dumps({"id": str(i), "text": texts[(i + 1) % 4]}) + "\n" for i in range(4)))
    base = ["evaluate", "reports", "--refs", str(refs), "--hyps", str(hyps), "--out", str(out), "--no-meteor"]
    rad = ["--extractor", "radbert", "--radbert-encoder", str(encoder_dir), "--radbert-head", str(head_file)]
    assert main([*base, *rad]) == 0
    record = json.loads((out / "report_metrics.json").read_text())
    # One shipped report is longer than 512 tokens of this tokenizer; it is a reference and (shifted) a hypothesis.
    cut = RadBertClassifier.load(encoder_dir, head_file).count_truncated(texts)
    assert cut >= 1 and record["label_extractor_truncated"] == 2 * cut
    assert record["label_extractor"]["name"] == "RadBertClassifier"
    assert set(record["methods"]["hyps"]["clinical_efficacy"]) >= {"f1_micro", "precision_micro", "recall_micro"}
    table = (out / "report_metrics.md").read_text()
    assert "ctrag.labels.radbert.RadBertClassifier" in table and "CT-RATE RadBERT classifier" in table
    capsys.readouterr()
    assert main([*base, "--extractor", "radbert", "--radbert-encoder", str(encoder_dir)]) == 2
    assert main([*base, *rad, "--fit-labels", str(ct_rate_dir / "train.csv")]) == 2
    assert main([*base, "--extractor", "bert"]) == 2
    err = capsys.readouterr().err
    assert "needs both" in err and "not --label-model" in err and "unknown" in err and "Traceback" not in err
