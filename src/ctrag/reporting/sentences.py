"""Report sentences tagged with Reg2RG / RadGenome-ChestCT regions and a normal/abnormal flag.

Why a separate tagger from :func:`ctrag.data.reports.assign_organs`: the organ-indexed sentence bank that report
generation retrieves from (AdaRAG-CT's organ-indexed sentences, Reg2RG's region-guided paragraphs) must speak the
vocabulary of the region annotations it is compared with, RadGenome-ChestCT's ten regions (DiffVP, appendix
0.A: abdomen, bones, breasts, esophagus, heart, lungs, trachea and bronchi, mediastinum, pleura, thyroid), and a
sentence there may belong to several regions. The names below are Reg2RG's spelling ("trachea and bronchie").

Labelling convention (followed here, and by the hand-labelled set in
``tests/data/ct_rate_nc_sa/region_sentences.jsonl`` whose README states the rules in full). It is the one the
RadGenome-ChestCT region reports use, as far as their published examples show (DiffVP's appendix files
"Thoracic aorta diameter is normal." under *Abdomen*; Reg2RG's released RadGenome reference region reports do
the same, and put "mediastinal main vascular structures, heart contour" under both heart and mediastinum):

* The aorta (thoracic, arch, descending, its wall plaques) is **mediastinum + abdomen**; the ascending aorta adds
  **heart**. The pulmonary artery / trunk, the venae cavae and the other great vessels are **mediastinum**.
  Coronary arteries, pericardium, chambers, valves, the cardiothoracic ratio are **heart**.
* Lymph nodes are **mediastinum** unless only their station says otherwise: hilar-only nodes are **lung**
  (mediastinal and hilar nodes together stay mediastinum), intrapulmonary / fissural nodes **lung**, axillary
  or supraclavicular-only nodes **bone** (RadGenome files the chest wall there), abdominal stations **abdomen**.
* The pleura outranks the lung: a sentence naming the pleura (pleural, subpleural, pneumothorax, a non-pericardial
  effusion) is **pleura** and not lung; "pleuroparenchymal" is lung. A sentence naming both the pleura and the
  pericardium ("no pleural or pericardial effusion") is **pleura** only; pericardium alone is heart.
* Anatomy outranks findings: a finding word ("nodule", "cyst", "degenerative") places a sentence only when no
  organ is named, so a thyroid nodule is thyroid and a liver cyst is abdomen.
* Airways (trachea, main / lobar / segmental bronchi, bronchial walls, peribronchial thickening without a lung
  named) are **trachea and bronchie**; bronchiectasis and bronchial findings inside a named lung are **lung**.
* The abdominal aorta and abdominal vessels are **abdomen** only.
* Hiatal hernia is **esophagus**; thoracic vertebrae, ribs, sternum, spine are **bone**; liver, gallbladder,
  spleen, pancreas, kidneys, adrenals, stomach are **abdomen**; gynecomastia is **breast**.
* Lead-ins ("When examined in the lung parenchyma window; ...", "As far as can be seen; ...") do not add their
  own region to the sentence they introduce; on their own, the parenchyma-window lead-in is lung.
* In a report, a sentence that names no region ("Clinical correlation is recommended.", "It is wider than
  normal.") takes the regions of the sentence before it (:func:`tag_report`); :func:`tag_regions` alone returns
  no region for it.

Normal/abnormal reuses the clause rules of :func:`ctrag.data.reports.is_abnormal` (negation, "within normal
limits", "natural", "no ... was observed" are normal), with the lead-in removed first.

Splitting extends :func:`ctrag.data.reports.split_sentences` (decimals, sizes, abbreviations, bullets, the
CT-RATE quote separators) with two repairs seen in CT-RATE text: a missing space after a full stop
("normal.Thoracic") and lead-in fragments cut off at "; " that are glued back to the sentence they introduce.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from ctrag.data.reports import clean_section, is_abnormal, split_clauses, split_joined_report, split_sentences

REGIONS: tuple[str, ...] = (
    "lung",
    "trachea and bronchie",
    "pleura",
    "mediastinum",
    "heart",
    "esophagus",
    "thyroid",
    "breast",
    "bone",
    "abdomen",
)
"""Reg2RG's ten regions (RadGenome-ChestCT), in Reg2RG's spelling and a fixed order for output."""


def assemble_report(findings: str, impression: str) -> str:
    """A written report in CT-RATE's layout ("Findings: ...", blank line, "Impression: ..."), the layout the
    corpus reports have, so generated and retrieved reports are scored against references on equal terms."""
    parts = []
    if findings:
        parts.append("Findings: " + findings)
    if impression:
        parts.append("Impression: " + impression)
    return "\n\n".join(parts)


@dataclass(frozen=True)
class TaggedSentence:
    """One report sentence with its regions (in :data:`REGIONS` order, possibly empty) and abnormal flag."""

    text: str
    regions: tuple[str, ...]
    abnormal: bool
    section: str = "findings"

    def to_dict(self) -> dict[str, object]:
        return {"text": self.text, "regions": list(self.regions), "abnormal": self.abnormal}


# --------------------------------------------------------------------------------------------------------------
# Splitting
# --------------------------------------------------------------------------------------------------------------

# "normal.Thoracic aorta": a full stop glued to a capitalised word (never a decimal, "e.g.", or "U.S.").
_GLUED_STOP_RE = re.compile(r"(?<=[a-z\)]{2})\.(?=[A-Z][a-z]{2,})")

_LEAD_IN_RE = re.compile(
    r"^(?:"
    r"(?:when|if)?\s*(?:examined|evaluated|viewed)\s+(?:in|with)\s+(?:the\s+)?(?:lung\s+)?parenchyma(?:l)?\s+window"
    r"|(?:in\s+the\s+)?(?:examination|evaluation)s?\s+(?:made\s+)?(?:in|with)\s+(?:the\s+)?(?:lung\s+)?"
    r"parenchyma(?:l)?\s+window"
    r"|when\s+the\s+lung\s+parenchyma\s+window\s+is\s+examined"
    r"|in\s+(?:the\s+)?(?:evaluation|examination)\s+of\s+(?:both\s+)?lung(?:s|\s+parenchyma)?(?:\s+in\s+the\s+"
    r"parenchyma\s+window)?"
    r"|in\s+lung\s+parenchyma\s+evaluation"
    r"|as\s+far\s+as\s+(?:can\s+be|it\s+can\s+be|is)\s+(?:seen|observed|evaluated)"
    r"(?:\s+within\s+the\s+limits\s+of\s+non-?contrast\s+ct)?"
    r"|within\s+the\s+limits\s+of\s+non-?contrast\s+ct"
    r")\s*[;:,]?\s*$",
    re.IGNORECASE,
)
_PARENCHYMA_LEAD_IN_RE = re.compile(r"parenchyma|\blungs?\b", re.IGNORECASE)
_LEAD_IN_PREFIX_RE = re.compile(
    r"^\s*(?:(?:when|if)\s+)?(?:examined|evaluated)\s+in\s+the\s+(?:lung\s+)?parenchyma(?:l)?\s+window\s*[;:,]\s*"
    r"|^\s*as\s+far\s+as\s+(?:can\s+be|it\s+can\s+be)\s+(?:seen|observed|evaluated)\s*[;:,]\s*",
    re.IGNORECASE,
)


def is_lead_in(sentence: str) -> bool:
    """Is ``sentence`` only a lead-in ("When examined in the lung parenchyma window"), not a statement?"""
    return bool(_LEAD_IN_RE.match(sentence.strip().rstrip(".")))


def split_report(text: str) -> list[str]:
    """Sentences of one report section, lead-in fragments glued to the sentence they introduce."""
    text = clean_section(text)
    if not text:
        return []
    text = _GLUED_STOP_RE.sub(". ", text)
    pieces = split_sentences(text)
    out: list[str] = []
    pending = ""
    for piece in pieces:
        if is_lead_in(piece):
            pending = f"{pending} {piece}".strip() if pending else piece
            continue
        if pending:
            lead = pending.rstrip(" ;:,")
            piece = (
                f"{lead}; {piece[:1].lower()}{piece[1:]}"
                if piece[:1].isupper() and piece[1:2].islower()
                else (f"{lead}; {piece}")
            )
            pending = ""
        out.append(piece)
    if pending:
        out.append(pending)
    return out


# --------------------------------------------------------------------------------------------------------------
# Region cues
# --------------------------------------------------------------------------------------------------------------


def _rx(*patterns: str) -> re.Pattern[str]:
    return re.compile(r"\b(?:" + "|".join(patterns) + r")", re.IGNORECASE)


# Tier 1: anatomy. Lymph nodes, the aorta and the pleura/pericardium pair are resolved by rules below.
_ANATOMY: dict[str, re.Pattern[str]] = {
    "lung": _rx(
        r"lungs?\b",
        r"pulmonary(?!\s+(?:arter|trunk|conus|concus|vein|venous|embol|hypertension|overload))",
        r"intrapulmonary",
        r"lingul\w*",
        r"pleuroparenchymal",
        r"fissur\w*",
        r"bronchiectas\w*",
        r"hilar(?! lymph)|hilum|hili\b",
        r"alveol\w*",
    ),
    "trachea and bronchie": _rx(
        r"trache(?:a|al|ostomy)\b",
        r"endotracheal",
        r"(?:main|lobar|segment(?:al)?|lobe|stem)\s+bronch\w*",
        r"bronch(?:us|i)\b",
        r"bronchial\s+(?:wall|structure|lumen|tree|system)\w*",
        r"airways?\b",
        r"air\s+passages?",
        r"carina\b",
        r"endobronchial",
        r"broncholith\w*",
    ),
    "pleura": _rx(
        r"pleura[el]?\b",
        r"subpleural",
        r"interpleural",
        r"pneumothora\w*",
        r"hydro\w*thora\w*",
        r"hemothora\w*",
        r"empyema",
    ),
    "mediastinum": _rx(
        r"mediastin\w*",
        r"thym\w*",
        r"prevascular",
        r"paratrache\w*",
        r"pretrache\w*",
        r"subcarinal",
        r"precarinal",
        r"aort\w*\s*-?\s*pulmon\w*|aorticopulmon\w*|aortopulmon\w*|ap window",
        r"paraesophageal(?!\s+hernia)",
        r"vena\s+cava\w*|svc\b|cava\b",
        r"pulmonary\s+(?:arter\w*|trunk|conus|concus|vein\w*|embol\w*)",
        r"brachiocephalic",
        r"subclavian",
        r"(?:main\s+)?vascular\s+structures?",
        r"great\s+vessels?",
        r"lymph\w*",
        r"laps?\b",
    ),
    "heart": _rx(
        r"heart",
        r"cardi(?:ac|o\w*)",
        r"cardiomegaly",
        r"pericardi\w*",
        r"coronar\w*",
        r"lad\b|circumflex|\brca\b",
        r"atri(?:um|al|a)\b",
        r"ventric\w*",
        r"valv\w*",
        r"mitral",
        r"myocard\w*",
        r"pacemaker",
        r"ct[or]\b",
        r"ascending\s+aort\w*",
    ),
    "esophagus": _rx(r"o?esophag\w*", r"hiat(?:al|us)\b", r"paraesophageal\s+hernia", r"nasogastric"),
    "thyroid": _rx(r"thyroid\w*", r"goiter", r"goitre"),
    "breast": _rx(r"breasts?\b", r"gynecomast\w*", r"mammar\w*", r"mastectom\w*", r"nipple"),
    "bone": _rx(
        r"bones?\b",
        r"bony",
        r"osseous",
        r"skelet\w*",
        r"vertebra\w*",
        r"ribs?\b",
        r"costa\b|costae\b|costal\s+(?:arch|cartilage)\w*|costochondral",
        r"stern(?:um|al|otomy)\w*",
        r"scapul\w*",
        r"clavic\w*",
        r"spin(?:e|al)\b",
        r"spinous",
        r"spondyl\w*",
        r"scolio\w*",
        r"kypho\w*",
        r"osteo\w*",
        r"humer\w*",
        r"corpus\s+heights?",
        r"schmorl",
        r"end\s*plates?",
        r"sacroiliac|iliac\s+(?:bone|wing)\w*",
        r"intervertebral",
        r"facet\s+joint\w*",
        r"axill\w*",
        r"supraclavicular",
    ),
    "abdomen": _rx(
        r"liver",
        r"hepat\w*",
        r"gall\s*bladder",
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
        r"gastr\w*",
        r"(?:intra|upper\s+)?abdom\w*|intraabdom\w*",
        r"bladder|prostat\w*|periprostat\w*|seminal|uter\w*|adnex\w*|pelvi[cs]\w*",
        r"periportal|portal\b",
        r"paracaval|para-aortic|paraaortic|celiac|retroperiton\w*|mesenter\w*",
        r"duoden\w*",
        r"intestin\w*",
        r"colon\w*|colic\b",
        r"bowel",
        r"nephr\w*",
        r"calyx|calyc\w*|calic\w*|pelvicalyc\w*",
        r"inguinal",
        r"perito\w*|ascites",
        r"diaphragmatic\s+crus|subdiaphragm\w*",
    ),
}

# Tier 2: findings that imply a region; used only when no tier-1 anatomy matched.
_FINDINGS: dict[str, re.Pattern[str]] = {
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
        r"bullae?\b|bullous|blebs?\b",
        r"tree[- ]in[- ]bud",
        r"interstiti\w*",
        r"covid\w*",
        r"crazy paving",
        r"cavit\w*",
        r"parenchym\w*",
        r"lob(?:e|es|ar)\b",
        r"hemithora\w*",
        r"air\s+trapping",
        r"reticul\w*",
        r"honeycomb\w*",
        r"aeration",
        r"lingula",
        r"apex|apical",
        r"basal\s+segment\w*|\w*basal\b",
        r"segments?\b",
        r"density\s+increase\w*|increased\s+density",
        r"atoll|halo",
        r"viral",
        r"peribronchial",
        r"budding\s+tree",
    ),
    "trachea and bronchie": _rx(r"peribronchial", r"bronchial", r"mucus\s+plug\w*|mucoid\s+impaction"),
    "pleura": _rx(r"effusion\w*"),
    "mediastinum": _rx(r"atheroscler\w*|atherom\w*|arterial\s+wall", r"dissection", r"aneurysm\w*"),
    "abdomen": _rx(
        r"atheroscler\w*|atherom\w*|arterial\s+wall",
        r"dissection",
        r"aneurysm\w*",
        r"steatosis",
        r"cysts?\b|cystic",
        r"calculi|calculus|stones?\b",
        r"hernia\w*",
    ),
    "bone": _rx(
        r"fractur\w*",
        r"lytic",
        r"blastic",
        r"sclerotic",
        r"degenerat\w*",
        r"osteophyt\w*",
        r"hyperostosis",
        r"hemangioma",
    ),
}

_LYMPH_RE = re.compile(r"\b(?:lymph\w*|laps?\b)", re.IGNORECASE)
_MEDIASTINAL_STATION_RE = _rx(
    r"mediastin\w*",
    r"prevascular",
    r"paratrache\w*",
    r"pretrache\w*",
    r"subcarinal",
    r"precarinal",
    r"aort\w*\s*-?\s*pulmon\w*|aorticopulmon\w*|aortopulmon\w*|ap window",
    r"paraesophageal",
    r"paracardiac|pericardial",
    r"retrocrural",
)
_HILAR_RE = _rx(r"hil(?:ar|um|i)\b|suprahilar|perihilar|peribronchial")
_INTRAPULMONARY_RE = _rx(r"intrapulmonary|intraparenchymal|fissur\w*|subpleural")
_AXILLARY_RE = _rx(r"axill\w*", r"supraclavicular", r"retropectoral", r"pectoral")
_ABDOMINAL_STATION_RE = _rx(
    r"periportal|portal\b|paracaval|para-?aortic|celiac|retroperiton\w*|mesenter\w*|(?:intra)?abdom\w*|hepat\w*|gastr\w*|inguinal"
)
_AORTA_RE = re.compile(r"\baort(?!\w*\s*-?\s*pulmon|icopulmon|opulmon)\w*|\barcus\b", re.IGNORECASE)
_ABDOMINAL_VESSEL_RE = _rx(r"abdominal\s+(?:aort\w*|vascular|vessel\w*)", r"mesenteric\s+arter\w*")
_THORACIC_VESSEL_RE = _rx(r"thoracic(?:-abdominal)?\s+aort\w*", r"ascending", r"arch\b", r"descending", r"mediastin\w*")
_PERICARDIAL_RE = _rx(r"pericardi\w*")
_PLEURA_ONLY_RE = _rx(r"pleura[el]?\b", r"subpleural", r"pneumothora\w*", r"hydro\w*thora\w*", r"empyema")
_LUNG_NAMED_RE = _rx(r"lungs?\b", r"pulmonary(?!\s+(?:arter|trunk|conus|vein|embol))", r"parenchym\w*")


def _anatomy_hits(sentence: str) -> set[str]:
    return {region for region, pattern in _ANATOMY.items() if pattern.search(sentence)}


def _finding_hits(sentence: str) -> set[str]:
    return {region for region, pattern in _FINDINGS.items() if pattern.search(sentence)}


def _lymph_regions(sentence: str) -> set[str]:
    """Regions of a sentence about lymph nodes, decided by the stations it names (module docstring)."""
    out: set[str] = set()
    mediastinal = bool(_MEDIASTINAL_STATION_RE.search(sentence))
    hilar = bool(_HILAR_RE.search(sentence))
    if mediastinal:
        out.add("mediastinum")
    if hilar and not mediastinal and not _AXILLARY_RE.search(sentence):
        out.add("lung")
    if _INTRAPULMONARY_RE.search(sentence) and not mediastinal:
        out.add("lung")
    if _ABDOMINAL_STATION_RE.search(sentence) and not mediastinal:
        out.add("abdomen")
    if not out and _AXILLARY_RE.search(sentence):
        out.add("bone")
    return out or {"mediastinum"}


def _strip_lead_in(sentence: str) -> str:
    stripped = _LEAD_IN_PREFIX_RE.sub("", sentence, count=1)
    return stripped if stripped.strip() else sentence


def tag_regions(sentence: str) -> tuple[str, ...]:
    """Regions of one sentence (in :data:`REGIONS` order); empty when it names none (see the module docstring)."""
    if not sentence or not sentence.strip():
        return ()
    if is_lead_in(sentence):
        return ("lung",) if _PARENCHYMA_LEAD_IN_RE.search(sentence) else ()
    text = _strip_lead_in(sentence)
    regions = _anatomy_hits(text)
    lymph = bool(_LYMPH_RE.search(text))
    if lymph:
        # The station decides; station words must not also count as their own anatomy.
        regions.discard("mediastinum")
        if _AXILLARY_RE.search(text):
            regions.discard("bone")
        if "lung" in regions and not _LUNG_NAMED_RE.search(text):
            regions.discard("lung")  # "hilar" belongs to the node rule
        if (
            "abdomen" in regions
            and _ABDOMINAL_STATION_RE.search(text)
            and not re.search(r"\b(?:liver|spleen|kidney|adrenal|pancrea\w*|gall\s*bladder|stomach)", text, re.I)
        ):
            regions.discard("abdomen")
        regions |= _lymph_regions(text)
        # A re-added mediastinum from vessels named beside the nodes ("main vascular structures") stays.
        if re.search(r"vascular\s+structures?|vena\s+cava|pulmonary\s+arter|brachiocephalic", text, re.I):
            regions.add("mediastinum")
    if _ABDOMINAL_VESSEL_RE.search(text) and not _THORACIC_VESSEL_RE.search(text):
        regions.discard("mediastinum")
        regions.add("abdomen")
    elif _AORTA_RE.search(text):
        regions |= {"mediastinum", "abdomen"}
    if "pleura" in regions or ("pleura" in _finding_hits(text) and not _PERICARDIAL_RE.search(text) and not regions):
        if _PERICARDIAL_RE.search(text):
            regions.discard("heart")
        if _PLEURA_ONLY_RE.search(text) or "pleura" in regions:
            regions.discard("lung")
    if "esophagus" in regions and re.search(r"\bhiat(?:al|us)\b", text, re.I):
        regions.discard("abdomen")
    if (
        "trachea and bronchie" in regions
        and "lung" in regions
        and re.search(r"bronchiectas", text, re.I)
        and not re.search(r"\btrache(?:a|al)\b|main\s+bronch", text, re.I)
    ):
        regions.discard("trachea and bronchie")
    if not regions:
        findings = _finding_hits(text)
        if "pleura" in findings and _PERICARDIAL_RE.search(text):
            findings.discard("pleura")
        if "trachea and bronchie" in findings and "lung" in findings:
            # Peribronchial / bronchial findings with the lung named are lung findings; alone, airway findings.
            if _LUNG_NAMED_RE.search(text) or re.search(r"bronchiectas|consolidat|ground|nodul|infiltrat", text, re.I):
                findings.discard("trachea and bronchie")
            else:
                findings.discard("lung")
        if "pleura" in findings:
            findings.discard("lung")
        if {"mediastinum", "abdomen"} <= findings or "mediastinum" in findings:
            findings.discard("lung")
        if "abdomen" in findings and "bone" in findings:
            findings.discard("abdomen")
        if "abdomen" in findings and "lung" in findings and re.search(r"\bcyst|cystic", text, re.I):
            if re.search(r"\bair\b|bronch|lobe|parenchym", text, re.I):
                findings.discard("abdomen")
            else:
                findings.discard("lung")
        regions = findings
    return tuple(r for r in REGIONS if r in regions)


# Findings the shared clause rules do not list; a clause with one of them and no negation is abnormal.
_EXTRA_FINDING_RE = _rx(
    r"adenoma\w*",
    r"height\s+loss",
    r"loss\s+of\s+height",
    r"accessory",
    r"osteodegenerat\w*",
    r"budding\s+tree",
    r"air\s+(?:is\s+)?(?:observed|seen)\s+between",
    r"above\s+(?:the\s+)?normal",
)
_EXTRA_NEGATION_RE = _rx(r"no\b", r"not\b", r"without", r"within\s+normal", r"normal\b", r"natural")


def sentence_is_abnormal(sentence: str) -> bool:
    """The abnormal flag of one sentence (lead-ins removed; rules of :func:`ctrag.data.reports.is_abnormal`)."""
    text = _strip_lead_in(sentence)
    if is_abnormal(text):
        return True
    return any(
        _EXTRA_FINDING_RE.search(clause) and not _EXTRA_NEGATION_RE.search(_EXTRA_FINDING_RE.sub("", clause))
        for clause in split_clauses(text)
    )


# --------------------------------------------------------------------------------------------------------------
# Whole reports
# --------------------------------------------------------------------------------------------------------------


def tag_sentences(sentences: Sequence[str], *, section: str = "findings") -> list[TaggedSentence]:
    """Tag already-split sentences of one section; a sentence naming no region inherits its predecessor's."""
    out: list[TaggedSentence] = []
    previous: tuple[str, ...] = ()
    for sentence in sentences:
        regions = tag_regions(sentence)
        if not regions:
            regions = previous
        out.append(TaggedSentence(sentence, regions, sentence_is_abnormal(sentence), section))
        previous = regions
    return out


def tag_report(findings: str, impression: str = "") -> list[TaggedSentence]:
    """Split both sections of a report and tag every sentence (findings first, then impression)."""
    return tag_sentences(split_report(findings), section="findings") + tag_sentences(
        split_report(impression), section="impression"
    )


def tag_report_text(text: str) -> list[TaggedSentence]:
    """Tag a report given as one text: CT-CLIP's joined ``report_text`` form or plain findings + impression.

    The findings/impression boundary is recovered as in :func:`ctrag.data.reports.split_joined_report`; a text
    without a recognisable boundary is all findings.
    """
    split = split_joined_report(text)
    return tag_report(split.findings, split.impression)
