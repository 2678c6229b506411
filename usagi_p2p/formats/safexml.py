"""Reading XML from outside (a partner's, an ERP's, a stranger's file) safely.

The adversaries of DESIGN.md write XML too: an entity bomb ("billion laughs")
that expands a few kilobytes into gigabytes, an external entity that reads
``/etc/passwd`` or fetches a URL (XXE), a file of a gigabyte. Here the size
is checked before a byte is parsed, and the parser (expat through defusedxml)
refuses any document type declaration at all: UBL needs none, so a DTD, an
entity declaration or an external reference is refused as ``input_unsafe``
before anything is expanded or fetched. Nothing is ever fetched.
"""

from __future__ import annotations

from typing import Final
from xml.etree.ElementTree import Element, ParseError  # noqa: S405 (types only; parsing is defusedxml's)

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

from ..node.errors import InputTooLargeError, MalformedInputError, UnsafeInputError

__all__ = ["MAX_XML", "parse_xml"]

#: The largest XML file read: 10 MiB (a Peppol invoice of thousands of lines is
#: a few MiB; the Peppol network's own limit for a message is 100 MB of
#: everything, attachments included, which this node does not take).
MAX_XML: Final = 10 << 20


def parse_xml(data: bytes, limit: int = MAX_XML) -> Element:
    """The root element of ``data``; a typed error for anything else.

    ``input_too_large`` over ``limit`` bytes (checked first), ``input_unsafe``
    for a DTD, an entity or an external reference, ``input_malformed`` when it
    is not well-formed XML.
    """
    if len(data) > limit:
        raise InputTooLargeError(f"the XML file is {len(data):,} bytes; at most {limit:,} are read")
    try:
        root: Element = fromstring(data, forbid_dtd=True, forbid_entities=True,
                                   forbid_external=True)
    except DefusedXmlException as exc:
        raise UnsafeInputError(f"the XML declares a DTD, an entity or an external reference "
                               f"({type(exc).__name__}); UBL needs none and none is read") from None
    except ParseError as exc:
        raise MalformedInputError(f"not well-formed XML: {exc}") from None
    except (ValueError, LookupError, RecursionError) as exc:  # an encoding Python does not know
        raise MalformedInputError(f"not readable XML: {exc}") from None
    return root
