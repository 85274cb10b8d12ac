"""Sentence, clause and assertion-status rules on CT-RATE phrasings."""

from __future__ import annotations

import pytest

from ctrag.labels.assertion import Scopes, clauses, sentences, status_of


def test_sentences_split_on_stops_and_quotes_but_not_decimals() -> None:
    text = 'Effusion of 3.3 cm is observed. No nodule was detected "" Impression item'
    assert sentences(text) == ["effusion of 3.3 cm is observed.", "no nodule was detected", "impression item"]


@pytest.mark.parametrize(
    ("span", "status"),
    [
        ("pleural effusion-thickening was not detected.", "absent"),
        ("no enlarged lymph nodes were detected in the mediastinum.", "absent"),
        ("heart contour and size are normal.", "absent"),
        ("bilateral pleural effusion is observed.", "present"),
        ("no significant change in the size of the nodule.", "present"),  # pseudo-negation
        ("a nodule which was not observed in the previous examination", "present"),
        ("mediastinal structures cannot be evaluated optimally because contrast material is not given.", "present"),
        ("nodular density in the right lower lobe (infection?)", "uncertain"),
        ("atelectasis-pneumonic infiltration cannot be excluded.", "uncertain"),
    ],
)
def test_status(span: str, status: str) -> None:
    assert status_of(span) == status


def test_clause_scope_stops_negation_at_a_contrast() -> None:
    parts = clauses("heart size increased, but pericardial effusion was not detected.")
    assert [status_of(p) for p in parts] == ["present", "absent"]
    parts = clauses("there are emphysematous changes in both lungs and no mass lesion is detected.")
    assert [status_of(p) for p in parts] == ["present", "absent"]


def test_comma_parts_are_finer_than_clauses() -> None:
    sc = Scopes.of("cardiomegaly, no pleural effusion.")
    assert len(sc.clauses) == 1 and len(sc.parts) == 2
