"""Reading `.fus` files: the text that the compiler parses and the module cache keys on.

Apart from the parser, so that `fusionc.load` of a cached module imports no part of the compiler.
"""

from __future__ import annotations

import codecs

from fusionc.errors import FusionError, Span


def decode_source(data: bytes, filename: str) -> str:
    """The text of a `.fus` file: UTF-8, without a leading byte-order mark, lines ending in "\\n"
    (as Python's text mode reads "\\r\\n" and "\\r"); a byte that is not UTF-8 is a located error.

    >>> decode_source(b"diagram d {\\r\\n}", "d.fus")
    'diagram d {\\n}'
    """
    # "\r" and "\n" are never part of a multi-byte UTF-8 character, so this is safe before decoding
    data = data.removeprefix(codecs.BOM_UTF8).replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line_start = data.rfind(b"\n", 0, exc.start) + 1
        column = len(data[line_start:exc.start].decode("utf-8")) + 1
        span = Span(data.count(b"\n", 0, exc.start) + 1, column)
        raise FusionError(f"the file is not UTF-8 text: byte 0x{data[exc.start]:02x} ({exc.reason})", span,
                          source=data.decode("utf-8", errors="replace"), filename=filename) from None
