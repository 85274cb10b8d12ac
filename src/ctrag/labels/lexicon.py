"""How CT-RATE reports name each of the 18 abnormalities: regular expressions per label.

Why a hand-written lexicon: 800 labelled reports are too few to learn that "cardiothoracic index increased" means
cardiomegaly or that "suture materials of sternotomy" is medical material, but a radiology reader knows it. The
patterns were written from the terms in the CT-RATE train reports (never val) and medical usage; they only say
*where* a label is talked about. Whether the mention counts is decided by :mod:`ctrag.labels.assertion` and how
much it counts by the learned weights of :mod:`ctrag.labels.extractor`.

A concept is a tuple of regexes that must all match inside one span (a clause or comma part), so "coronary" +
"calcif" is coronary calcification while "calcif" alone is not.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from ctrag.data.labels import CT_RATE_LABELS

_CALC = r"calcif|atheroscl|atherom|plaque"

_RAW: dict[str, tuple[tuple[str, ...], ...]] = {
    "Medical material": (
        (r"catheter",),
        (r"\bport\b",),
        (r"stent",),
        (r"pace ?maker|\bicd\b|defibrillator|electrode|\bleads?\b|cable",),
        (r"prosthe|\bvalve replacement|\bmetallic|\bimplant(?:ed)? (?:device|material)",),
        (r"sutur|sternotomy wire|\bwires?\b|cerclage|\bclips?\b|staple",),
        (r"\btube\b|cannula|\bdrain(?:age)?\b|\bpeg\b|tracheostomy|intubat",),
        (r"\bscrews?\b|\bplates?\b|fixation|\bcoil",),
        (r"surgical material|foreign body|(?<!contrast )\bmaterials?\b",),
    ),
    "Arterial wall calcification": (
        (r"aort|arter|vascular|vessel|carotid|subclavian|brachiocephalic", _CALC),
        (r"atheroscl|atherom",),
    ),
    "Cardiomegaly": (
        (r"cardiomegal",),
        (r"heart|cardiac|cardiothoracic", r"increas|enlarg|large|big|prominen|widen"),
    ),
    "Pericardial effusion": (
        (r"pericard", r"effusion|fluid|smear|collection"),
        (r"pericardial (?:space|cavity)",),
    ),
    "Coronary artery wall calcification": ((r"coronar", _CALC),),
    "Hiatal hernia": ((r"hiat(?:al|us)",), (r"hernia",)),
    "Lymphadenopathy": (
        (r"lymphadenopath|\blaps?\b|lymphadenomegal",),
        (r"lymph ?nodes?|\bnodes?\b",),
        (r"lymph ?nodes?|\bnodes?\b", r"enlarg|patholog|increas|conglomerat|bulky|prominent"),
    ),
    "Emphysema": ((r"emphysem",), (r"bulla|bullae|bullous|blebs?\b",)),
    "Atelectasis": ((r"atelecta",), (r"collaps",)),
    "Lung nodule": ((r"\bnodules?\b|micronodul",), (r"nodular",), (r"\bmass\b|\bmasses\b|\blesion",)),
    "Lung opacity": (
        (r"opacit|ground[ -]?glass|\bggo\b",),
        (r"density increas|increased density|increase in density|densities",),
        (r"infiltrat|pneumon",),
    ),
    "Pulmonary fibrotic sequela": (
        (r"fibro|sequel",),
        (r"\bbands?\b|scar|retraction|honeycomb",),
    ),
    "Pleural effusion": (
        (r"pleura|hemithorax|thorax|hydro", r"effusion|fluid"),
        (r"effusion",),
        (r"hydrothorax|hydropn",),
    ),
    "Mosaic attenuation pattern": ((r"mosaic",), (r"air[- ]trapping",)),
    "Peribronchial thickening": (
        (r"peribronch",),
        (r"bronch", r"wall", r"thick"),
        (r"peribronchovascular", r"thick|increase"),
    ),
    "Consolidation": ((r"consolid",), (r"air bronchogram",)),
    "Bronchiectasis": ((r"bronchiecta",), (r"bronch", r"dilat|ectasi")),
    "Interlobular septal thickening": (
        (r"septal|septum|septa\b", r"thick"),
        (r"interlobular",),
        (r"crazy[- ]paving",),
    ),
}

Concept = tuple[re.Pattern[str], ...]

#: Label -> concepts (each a tuple of compiled regexes that must all match in one span).
LEXICON: Mapping[str, tuple[Concept, ...]] = {
    label: tuple(tuple(re.compile(p) for p in concept) for concept in _RAW[label]) for label in CT_RATE_LABELS
}


def concept_matches(concept: Concept, span: str) -> bool:
    return all(p.search(span) for p in concept)


def n_concepts() -> dict[str, int]:
    return {label: len(c) for label, c in LEXICON.items()}
