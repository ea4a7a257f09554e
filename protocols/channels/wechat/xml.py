"""WeChat Pay v2's flat ``<xml>`` documents: one level of elements, text in CDATA."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping


def to_xml(params: Mapping[str, str]) -> bytes:
    parts = ["<xml>"]
    for k, v in params.items():
        parts.append(f"<{k}><![CDATA[{v.replace(']]>', ']]]]><![CDATA[>')}]]></{k}>")
    parts.append("</xml>")
    return "".join(parts).encode()


def from_xml(body: bytes) -> dict[str, str]:
    """Parse a flat document. DTDs are refused: the channel never sends one, and that keeps
    entity tricks (billion laughs, external entities) out."""
    if b"<!DOCTYPE" in body or b"<!ENTITY" in body:
        raise ValueError("DTD in channel XML")
    root = ET.fromstring(body)
    if root.tag != "xml":
        raise ValueError(f"root element {root.tag!r}, expected 'xml'")
    return {child.tag: (child.text or "") for child in root}
