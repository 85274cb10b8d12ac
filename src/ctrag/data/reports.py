"""Rule-based parsing of chest-CT reports: sections, sentences, organs and a normal/abnormal flag.

Why rules and not a model: the parser must run offline on two CPU cores, be deterministic, and be explainable
when a retrieved organ sentence looks wrong. The rules were written for the English CT-RATE reports (translated
Turkish reports with very regular phrasing) and measured against their 18 abnormality labels
(``tests/data/test_reports.py`` holds the figures).

Sentence splitting (no nltk data is available here) treats as boundaries: ``.``/``!``/``?`` followed by
white space and an upper-case letter, digit, quote or bullet; the ``"`` quote, ``•`` and ``·`` bullets that
CT-RATE uses to separate impression items; and ``;`` followed by an upper-case letter ("When examined in the
lung parenchyma window; Aeration of ..."). It never splits decimals ("3.5 mm"), sizes ("5x3 cm"), known
abbreviations ("vs.", "e.g.", "approx.", "Dr.", initials) and drops list numbering ("1. ", "2) ").

Organ assignment (one of :data:`ORGANS`): every sentence is matched against two tiers of keyword patterns.
Tier 1 names anatomy ("pleural", "trachea", "liver", "vertebra"...); tier 2 names findings that imply an organ
("effusion" -> pleura, "nodule" -> lung, "osteophyte" -> bone) and is used only when no tier-1 term matched,
so "a hypodense nodule in the liver" goes to ``upper_abdomen``, not ``lung``. Among the matches of the tier in
use, the one that starts earliest in the sentence wins (ties: the longest match), because these reports put
the subject first ("Pleural effusion ... in both lungs" is about the pleura). ``organs`` keeps every organ
matched in either tier, primary first. Sentences with no match are ``other``.

Normal/abnormal: a sentence is cut into clauses at "but", "however", "although", "whereas", "except", ", and",
";" and ":"; a clause is *positive* when it names a finding (nodule, effusion, calcification, catheter,
"larger than normal", ...) and carries no negation or normality cue ("no", "not observed", "without",
"within normal limits", "normal", "natural", "preserved", "open"/"patent" for airways, ...). "Normal" is not
a negation when it is compared ("larger than normal"). A sentence is abnormal when any clause is positive; a
report is abnormal when any sentence is. Sentences without a finding term (recommendations, technique) are
normal.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

ORGANS: tuple[str, ...] = (
    "lung",
    "airway",
    "pleura",
    "heart",
    "mediastinum",
    "aorta",
    "esophagus",
    "bone",
    "upper_abdomen",
    "other",
)
"""Organ vocabulary of the sentence bank (``other`` collects everything the rules cannot place)."""

THORACIC_ORGANS: tuple[str, ...] = ("lung", "airway", "pleura", "heart", "mediastinum", "aorta", "esophagus")
"""Organs covered by the 18 CT-RATE abnormality labels (all thoracic)."""

SECTIONS: tuple[str, ...] = ("findings", "impression")

# Placeholders some CT-RATE rows carry instead of an impression.
_EMPTY_SECTION_TEXT = {"", "not given.", "not given", "nan", "none", "-"}

# --------------------------------------------------------------------------------------------------------------
# Sentence splitting
# --------------------------------------------------------------------------------------------------------------

_ABBREVIATIONS = {
    "vs",
    "e.g",
    "eg",
    "i.e",
    "ie",
    "approx",
    "appr",
    "cf",
    "dr",
    "prof",
    "assist",
    "assoc",
    "mr",
    "mrs",
    "ms",
    "st",
    "fig",
    "resp",
    "max",
    "min",
    "incl",
    "est",
    "diam",
}
_QUOTES = str.maketrans({"“": '"', "”": '"', "„": '"', "″": '"'})
_BULLET_RE = re.compile(r'\s*(?:"|•|(?:(?<=\s)|^)·|(?<=[.;:])·)\s*')
_SEMICOLON_RE = re.compile(r";\s+(?=[A-Z])")
_END_RE = re.compile(r"[.!?]+(?=\s+[\"'(\[A-Z0-9•·-]|\s*$)")
_LIST_MARKER_RE = re.compile(r"^\s*(?:\(?\d{1,2}[.)]|\d{1,2}\s*-|[-–*])\s+")
_PURE_MARKER_RE = re.compile(r"^\s*\(?\d{1,2}[.)]?\s*$")
_HAS_LETTER_RE = re.compile(r"[A-Za-z]")


def normalize_text(text: str) -> str:
    """Collapse white space and map typographic quotes to ``"`` (CT-RATE uses both as item separators)."""
    return re.sub(r"\s+", " ", str(text).translate(_QUOTES)).strip()


def _is_abbreviation(chunk: str) -> bool:
    """Does ``chunk`` (text up to a period) end with an abbreviation or an initial, not a sentence?"""
    match = re.search(r"([A-Za-z][A-Za-z.]*)$", chunk)
    if not match:
        return False
    token = match.group(1).lower().rstrip(".")
    if token in _ABBREVIATIONS:
        return True
    # Single upper-case initials ("Dr. A. Smith"), but not a lone word like "I".
    return len(match.group(1)) == 1 and match.group(1).isupper() and chunk[-2:-1] in {" ", ".", ""}


def _split_on_terminators(text: str) -> list[str]:
    pieces: list[str] = []
    start = 0
    for match in _END_RE.finditer(text):
        end = match.end()
        chunk = text[start:end]
        if match.group(0) == "." and _is_abbreviation(text[start : match.start()]):
            continue
        pieces.append(chunk)
        start = end
    pieces.append(text[start:])
    return pieces


def split_sentences(text: str) -> list[str]:
    """Split report text into sentences (see the module docstring for the rules).

    Returns stripped sentences without list markers, bullets or separator quotes; fragments without any letter
    (a stray "1." or "-") are dropped.
    """
    if not text:
        return []
    text = normalize_text(text)
    out: list[str] = []
    for block in _BULLET_RE.split(text):
        for part in _SEMICOLON_RE.split(block):
            for piece in _split_on_terminators(part):
                piece = piece.strip().strip('"').strip()
                if not piece or _PURE_MARKER_RE.match(piece):
                    continue
                piece = _LIST_MARKER_RE.sub("", piece).strip()
                if _HAS_LETTER_RE.search(piece):
                    out.append(piece)
    return out


# --------------------------------------------------------------------------------------------------------------
# Findings / impression
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SectionSplit:
    """Findings and impression recovered from a single text; ``method`` says which rule found the boundary."""

    findings: str
    impression: str
    method: str  # "quote" | "bullet" | "trailing" | "none"


def clean_section(text: Any) -> str:
    """Normalise one section; CT-RATE placeholders ("Not given.", NaN) become the empty string."""
    if text is None:
        return ""
    value = normalize_text(str(text))
    return "" if value.lower() in _EMPTY_SECTION_TEXT else value


def split_joined_report(text: str) -> SectionSplit:
    """Recover findings and impression from CT-CLIP's ``report_text`` column.

    The CT-CLIP text-classifier CSVs join the two sections with a ``"`` (``... preserved. " Thoracic CT
    examination within normal limits``); further ``"`` separate impression items. Rows without a quote use
    bullets (``•``/``·``) before the impression items instead; a few rows have neither and end with an
    unpunctuated impression phrase ("... bone structures. Nodules smaller than 5 mm in both lungs"), which is
    taken as the impression. Anything else is all findings (``method="none"``).
    """
    text = normalize_text(text)
    if '"' in text:
        head, _, tail = text.partition('"')
        return SectionSplit(head.strip(), _join_items(tail.split('"')), "quote")
    bullet = re.search(r"(?:•|(?:(?<=\s)|^|(?<=[.;:]))·)", text)
    if bullet:
        head, tail = text[: bullet.start()], text[bullet.start() :]
        return SectionSplit(head.strip(), _join_items(re.split(r"[•·]", tail)), "bullet")
    stripped = text.rstrip()
    if stripped and stripped[-1] not in ".!?)":
        cut = max(stripped.rfind(". "), stripped.rfind("? "), stripped.rfind("! "))
        if cut > 0:
            return SectionSplit(stripped[: cut + 1].strip(), stripped[cut + 2 :].strip(), "trailing")
    return SectionSplit(stripped, "", "none")


def _join_items(items: Iterable[str]) -> str:
    """Join impression items into sentences, adding a period where an item lacks one."""
    parts = []
    for item in items:
        item = item.strip().strip('"').strip()
        if not _HAS_LETTER_RE.search(item):
            continue
        parts.append(item if item[-1] in ".!?" else item + ".")
    return " ".join(parts)


# --------------------------------------------------------------------------------------------------------------
# Organs
# --------------------------------------------------------------------------------------------------------------


def _rx(*patterns: str) -> re.Pattern[str]:
    return re.compile(r"\b(?:" + "|".join(patterns) + r")", re.IGNORECASE)


# Tier 1: anatomy. Order inside a tier does not matter (earliest match in the sentence wins).
_ORGAN_ANATOMY: dict[str, re.Pattern[str]] = {
    "airway": _rx(
        r"trachea\w*",
        r"main bronch\w*",
        r"bronch(?:us|i)\b",
        r"airways?\b",
        r"carina\b",
        r"endobronchial",
        r"tracheostomy",
        r"intubation tube",
        r"endotracheal",
    ),
    "pleura": _rx(r"pleura\b", r"pleural", r"pleurae", r"pneumothora\w*", r"hydro\w*thora\w*", r"hemothora\w*"),
    "lung": _rx(
        r"lungs?\b",
        r"pulmonary(?! arter| trunk| vein| embol)",
        r"parenchym\w*(?= window| of (?:both |the )?lung)",
        r"lung parenchyma",
        r"lobes?\b(?! of the liver| of liver)",
        r"lobar",
        r"pleuroparenchymal",
        r"subpleural",
        r"fissur\w*",
        r"apex of (?:both|the) lungs?",
        r"bronchiectasi\w*",
        r"peribronchial",
        r"bronchial wall",
        r"bronchiol\w*",
        r"interlobular",
        r"centriacinar",
        r"paraseptal",
        r"aeration",
    ),
    "heart": _rx(
        r"heart",
        r"cardiac",
        r"cardiomegaly",
        r"pericardi\w*",
        r"coronary",
        r"atri(?:um|al|a)\b",
        r"ventric\w*",
        r"myocard\w*",
        r"valv\w*",
        r"mitral",
        r"pacemaker",
        r"cardiothoracic",
    ),
    "aorta": _rx(r"aort\w*", r"arcus", r"aneurysm\w*", r"atheroscler\w*", r"atherom\w*"),
    "esophagus": _rx(r"o?esophag\w*", r"hiat(?:al|us)\b", r"nasogastric"),
    "mediastinum": _rx(
        r"mediastin\w*",
        r"lymph ?nodes?",
        r"lymphadenopath\w*",
        r"lap\b",
        r"hil(?:ar|um|i)\b",
        r"prevascular",
        r"paratracheal",
        r"subcarinal",
        r"thym\w*",
        r"vena cava",
        r"pulmonary (?:arter\w*|trunk|vein\w*|embol\w*)",
        r"main vascular",
        r"brachiocephalic",
        r"superior vena",
    ),
    "bone": _rx(
        r"bones?\b",
        r"bony",
        r"osseous",
        r"vertebr\w*",
        r"ribs?\b",
        r"costal",
        r"stern(?:um|al|otomy)\w*",
        r"scapul\w*",
        r"clavic\w*",
        r"spin(?:e|al column)\b",
        r"thoracic spine",
        r"corpus heights?",
        r"spondyl\w*",
        r"scoliosis",
        r"kyphos\w*",
        r"osteo\w*",
        r"humer\w*",
    ),
    "upper_abdomen": _rx(
        r"liver",
        r"hepat\w*",
        r"gall ?bladder",
        r"bil(?:e|iary)\b",
        r"choledoch\w*",
        r"cholecyst\w*",
        r"spleen",
        r"splen\w*",
        r"pancrea\w*",
        r"kidneys?",
        r"renal",
        r"adrenal\w*",
        r"stomach",
        r"gastric",
        r"abdom\w*",
        r"periportal",
        r"portal",
        r"perihepatic",
        r"duoden\w*",
        r"intestin\w*",
        r"colon",
        r"pericolonic",
        r"bowel",
        r"nephrectom\w*",
        r"nephro\w*",
        r"calyx|calic\w*|caliect\w*",
    ),
    "other": _rx(
        r"thyroid",
        r"breasts?",
        r"axill\w*",
        r"supraclavicular",
        r"skin",
        r"subcutaneous",
        r"soft tissues?",
        r"muscl\w*",
        r"neck",
        r"chest wall",
        r"mammar\w*",
        r"gynecomastia",
    ),
}

# Tier 2: findings that imply an organ; used only when no tier-1 anatomy term matched.
_ORGAN_FINDINGS: dict[str, re.Pattern[str]] = {
    "pleura": _rx(r"effusion\w*", r"empyema"),
    "lung": _rx(
        r"nodul\w*",
        r"consolidat\w*",
        r"ground[- ]glass",
        r"opacit\w*",
        r"atelecta\w*",
        r"emphysem\w*",
        r"fibro\w*",
        r"sequel\w*",
        r"infiltrat\w*",
        r"pneumoni\w*",
        r"mosaic",
        r"septal",
        r"bullae?\b|bullous",
        r"tree[- ]in[- ]bud",
        r"interstitial",
        r"covid\w*",
        r"crazy paving",
        r"cavit\w*",
    ),
    "aorta": _rx(r"arterial wall", r"calcific atheroma", r"dissection"),
    "heart": _rx(r"pericardial effusion"),
    "mediastinum": _rx(r"lymph\w*", r"goiter"),
    "bone": _rx(r"fractur\w*", r"lytic", r"sclerotic", r"degenerative", r"osteophyt\w*", r"blastic"),
    "upper_abdomen": _rx(r"steatosis", r"cyst\w*", r"calculi|calculus|stones?"),
}


def _first_match(sentence: str, table: dict[str, re.Pattern[str]]) -> list[tuple[int, int, str]]:
    hits = []
    for organ, pattern in table.items():
        match = pattern.search(sentence)
        if match:
            hits.append((match.start(), -(match.end() - match.start()), organ))
    return sorted(hits)


def assign_organs(sentence: str) -> tuple[str, ...]:
    """All organs a sentence mentions, the primary (assigned) organ first; ``("other",)`` when none match."""
    anatomy = _first_match(sentence, _ORGAN_ANATOMY)
    findings = _first_match(sentence, _ORGAN_FINDINGS)
    ordered = [organ for _, _, organ in (anatomy or findings)]
    for _, _, organ in anatomy + findings:
        if organ not in ordered:
            ordered.append(organ)
    return tuple(ordered) if ordered else ("other",)


def organ_of(sentence: str) -> str:
    """The one organ a sentence is filed under (see the module docstring for the precedence rules)."""
    return assign_organs(sentence)[0]


# --------------------------------------------------------------------------------------------------------------
# Normal / abnormal
# --------------------------------------------------------------------------------------------------------------

_CLAUSE_SPLIT_RE = re.compile(
    r"\s*(?:;|:|,?\s+but\s+|,?\s+however,?\s+|,?\s+although\s+|,?\s+whereas\s+|,?\s+except(?: for)?\s+|"
    r",\s+and\s+|\s+and\s+(?=(?:there|a|an|the|it|its|millimetric|minimal|mild|several|multiple)\s)|"
    r",?\s+in addition,?\s+|,?\s+apart from\s+|,\s+while\s+|\s+while\s+|,\s*(?=(?:no|not|without)\s))\s*",
    re.IGNORECASE,
)

_FINDING_RE = re.compile(
    r"\b(?:"
    r"nodul\w*|mass(?:es)?\b|lesions?\b|tumou?r\w*|neoplas\w*|malignan\w*|metasta\w*|carcinoma|ca\b|"
    r"opacit\w*|consolidat\w*|ground[- ]glass|infiltrat\w*|pneumoni\w*|infect\w*|inflamma\w*|"
    r"atelecta\w*|emphysem\w*|bullae?\b|bullous|blebs?\b|fibro\w*|sequel\w*|scar\w*|"
    r"bronchiectasi\w*|peribronchial|bands?\b|wall thickening|thickening|thickened|thickenings|mosaic|septal|"
    r"interstitial|tree[- ]in[- ]bud|cavit\w*|honeycomb\w*|reticula\w*|air trapping|crazy paving|"
    r"effusion\w*|fluid|collection\w*|pneumothora\w*|hydro\w*|empyema|hemothora\w*|"
    r"calcif\w*|calcific|atheroscler\w*|atherom\w*|plaques?\b|aneurysm\w*|ectasi\w*|dilat\w*|enlarg\w*|"
    r"cardiomegaly|hepatomegaly|splenomegaly|megaly|hernia\w*|"
    r"lymphadenopath\w*|lymph ?nodes?\b|lap\b|"
    r"catheter\w*|tubes?\b|stents?\b|ports?\b|pacemaker\w*|prosthe\w*|sutures?\b|clips?\b|"
    r"drain\w*|cannula\w*|graft\w*|implant\w*|electrode\w*|wires?\b|material|"
    r"postop\w*|post-op\w*|operat\w*|surg\w*|resect\w*|lobectomy|sternotomy|mastectomy|"
    r"cysts?\b|cystic|stones?\b|calculi|calculus|lithiasis|steatosis|atroph\w*|hypodens\w*|hyperdens\w*|"
    r"degenerat\w*|osteophyt\w*|spondyl\w*|scoliosis|kyphos\w*|fractur\w*|lytic|sclerotic|sclerosis|"
    r"deformit\w*|collaps\w*|destruct\w*|"
    r"increased|decreased|increase|decrease|reduced|narrow\w*|stenos\w*|occlu\w*|obstruct\w*|"
    r"embol\w*|thromb\w*|edema\w*|oedema\w*|air images|free air|pathological|abnormal\w*|"
    r"larger than|smaller than normal|than normal|compatible with|in favor of|suggestive|suspicious|"
    r"consistent with|differential|sign of|signs of|gynecomastia|goiter|hiatal"
    r")",
    re.IGNORECASE,
)

_NEGATION_RE = re.compile(
    r"\b(?:"
    r"no|not|none|nor|without|absent|absence|negative|free of|neither|"
    r"within normal limits|normal|natural|unremarkable|preserved|intact|patent|open|clear|"
    r"regular|symmetric\w*|usual|ordinary|did not|could not be (?:detected|observed|seen)|"
    r"was not|were not|is not|are not|has not|have not|resolved|regressed|regression|disappeared"
    r")\b",
    re.IGNORECASE,
)

# "Normal"-like words that describe a comparison, not normality.
_COMPARATIVE_RE = re.compile(
    r"\b(?:larger|smaller|greater|higher|lower|wider|thicker|more|less)\s+than\s+(?:normal|usual)\b"
    r"|\babove\s+(?:the\s+)?normal\b|\bupper limit of normal\b",
    re.IGNORECASE,
)

# A finding stated as a size or count even when a "no"-word appears elsewhere ("a 5 mm nodule, not calcified").
_POSITIVE_OVERRIDE_RE = re.compile(
    r"\b(?:\d+(?:[.,]\d+)?\s*(?:x\s*\d+(?:[.,]\d+)?\s*)?(?:mm|cm)\b.*\b(?:nodul\w*|mass\w*|lesion\w*|lymph ?node\w*|"
    r"cyst\w*|effusion))|\bmillimetric\s+(?:nonspecific\s+)?nodul\w*|\bnon-?specific\s+nodul\w*",
    re.IGNORECASE,
)
_NEGATED_SIZE_RE = re.compile(
    r"\b(?:no|not|without)\b[^.]*\b(?:larger than|exceeding|over)\b|did not reach|no significant",
    re.IGNORECASE,
)


def _clause_positive(clause: str) -> bool:
    if not _FINDING_RE.search(clause):
        return False
    if _COMPARATIVE_RE.search(clause):
        return True
    if _POSITIVE_OVERRIDE_RE.search(clause) and not _NEGATED_SIZE_RE.search(clause):
        return True
    return not _NEGATION_RE.search(clause)


def split_clauses(sentence: str) -> list[str]:
    """Clauses of a sentence, cut where a report changes polarity ("no effusion; a 4 mm nodule ...")."""
    return [c for c in _CLAUSE_SPLIT_RE.split(sentence) if c and c.strip()]


def is_abnormal(sentence: str) -> bool:
    """True when any clause names a finding without negating or normalising it."""
    return any(_clause_positive(clause) for clause in split_clauses(sentence))


# --------------------------------------------------------------------------------------------------------------
# Parsed report
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReportSentence:
    """One sentence with its section, primary organ, every organ mentioned, and the abnormal flag."""

    text: str
    section: str
    organ: str
    organs: tuple[str, ...]
    abnormal: bool


@dataclass(frozen=True)
class ParsedReport:
    """A report split into sentences; ``abnormal`` is true when any sentence is abnormal."""

    findings: str
    impression: str
    sentences: tuple[ReportSentence, ...] = field(default_factory=tuple)

    @property
    def abnormal(self) -> bool:
        return any(s.abnormal for s in self.sentences)

    def abnormal_in(self, organs: Iterable[str]) -> bool:
        """Abnormal when restricted to sentences whose primary organ is in ``organs``."""
        wanted = set(organs)
        return any(s.abnormal and s.organ in wanted for s in self.sentences)

    @property
    def abnormal_organs(self) -> tuple[str, ...]:
        return tuple(o for o in ORGANS if any(s.abnormal and s.organ == o for s in self.sentences))

    def section(self, name: str) -> tuple[ReportSentence, ...]:
        if name not in SECTIONS:
            raise ValueError(f"section must be one of {SECTIONS}, got {name!r}")
        return tuple(s for s in self.sentences if s.section == name)

    def organ_sentences(self, *, abnormal: bool | None = None, section: str | None = None) -> dict[str, list[str]]:
        """Organ -> sentences (every organ key present, possibly empty), optionally filtered by flag/section."""
        out: dict[str, list[str]] = {organ: [] for organ in ORGANS}
        for s in self.sentences:
            if abnormal is not None and s.abnormal != abnormal:
                continue
            if section is not None and s.section != section:
                continue
            out[s.organ].append(s.text)
        return out


def parse_report(findings: str, impression: str = "") -> ParsedReport:
    """Parse the two sections of a report into typed sentences."""
    findings_clean = clean_section(findings)
    impression_clean = clean_section(impression)
    sentences = []
    for section, text in (("findings", findings_clean), ("impression", impression_clean)):
        for sent in split_sentences(text):
            organs = assign_organs(sent)
            sentences.append(ReportSentence(sent, section, organs[0], organs, is_abnormal(sent)))
    return ParsedReport(findings_clean, impression_clean, tuple(sentences))


def parse_joined_report(text: str) -> ParsedReport:
    """Parse a CT-CLIP ``report_text`` (findings and impression joined, see :func:`split_joined_report`)."""
    split = split_joined_report(text)
    return parse_report(split.findings, split.impression)


def organ_sentences(
    report: ParsedReport | Any | str,
    *,
    abnormal: bool | None = None,
    section: str | None = None,
) -> dict[str, list[str]]:
    """Organ -> sentences for a ``ParsedReport``, a ``Case`` (uses its findings and impression) or raw text.

    Raw text is treated as findings only. Every organ of :data:`ORGANS` is a key, so callers can index the
    result without checking.
    """
    if isinstance(report, ParsedReport):
        parsed = report
    elif isinstance(report, str):
        parsed = parse_report(report)
    elif hasattr(report, "report_findings") and hasattr(report, "report_impression"):
        parsed = parse_report(report.report_findings, report.report_impression)
    else:
        raise TypeError(f"organ_sentences: expected ParsedReport, Case or str, got {type(report).__name__}")
    return parsed.organ_sentences(abnormal=abnormal, section=section)
