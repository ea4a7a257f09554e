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
    """Parse a flat document, in UTF-8 (the channel's encoding) and nothing else, so that the
    check of its bytes for a DTD reads what the parser reads: in UTF-16 (told by a byte-order
    mark, or by the zero bytes of its ASCII) a DTD's bytes are not b"<!DOCTYPE", and its entities
    were expanded. DTDs are refused: the channel never sends one, and that keeps entity tricks
    (billion laughs, external entities) out. Raises ``ValueError`` for a document that cannot
    be read."""
    body.decode("utf-8")  # strict (UnicodeDecodeError is a ValueError): no byte-order mark of UTF-16 or 32
    if b"\x00" in body:  # never in XML: the parser would take it for UTF-16's or UTF-32's
        raise ValueError("a zero byte in channel XML")
    if b"<!DOCTYPE" in body or b"<!ENTITY" in body:
        raise ValueError("DTD in channel XML")
    parser = ET.XMLParser(encoding="utf-8")  # whatever its declaration says
    try:
        parser.feed(body)
        root = parser.close()
    except ET.ParseError as exc:
        raise ValueError(f"unreadable XML: {exc}") from None
    if root.tag != "xml":
        raise ValueError(f"root element {root.tag!r}, expected 'xml'")
    return {child.tag: (child.text or "") for child in root}
