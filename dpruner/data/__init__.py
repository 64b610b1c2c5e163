"""Records, splits, templates and calibration tokens (architecture.md, "Data records")."""

from dpruner.data.corpora import SECTION_LABELS
from dpruner.data.instances import domain_instances, entry_texts, held_back_texts
from dpruner.data.prepare import tokens_sha256, write_calibration
from dpruner.data.sources import describe_source, load_records
from dpruner.data.splits import split_records
from dpruner.data.templates import evaluation_text, render, template_fields
from dpruner.data.tokens import calibration_tokens, text_tokens

__all__ = [
    "SECTION_LABELS",
    "calibration_tokens",
    "describe_source",
    "domain_instances",
    "entry_texts",
    "evaluation_text",
    "held_back_texts",
    "load_records",
    "render",
    "split_records",
    "template_fields",
    "text_tokens",
    "tokens_sha256",
    "write_calibration",
]
