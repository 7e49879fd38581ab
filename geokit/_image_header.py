"""Reading image headers from bytes: format, stored size and EXIF orientation, nothing decoded.

Private to :mod:`geokit.images`, which turns what is found here into checks and errors.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass


@dataclass(frozen=True)
class ImageInfo:
    """What the header says: format, stored size (before EXIF orientation), EXIF orientation."""

    format: str
    width: int
    height: int
    orientation: int = 1

    @property
    def pixels(self) -> int:
        return self.width * self.height


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_SOF = frozenset((0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF))


def _exif_orientation(data: bytes, start: int, end: int) -> int:
    """Orientation tag (0x0112) of IFD0 in the TIFF block ``data[start:end]``; 1 if absent."""
    try:
        order = data[start : start + 2]
        e = "<" if order == b"II" else ">" if order == b"MM" else None
        if e is None:
            return 1
        ifd = start + struct.unpack_from(e + "I", data, start + 4)[0]
        count = struct.unpack_from(e + "H", data, ifd)[0]
        for k in range(min(count, 256)):
            entry = ifd + 2 + 12 * k
            if entry + 12 > end:
                break
            if struct.unpack_from(e + "H", data, entry)[0] == 0x0112:
                value = struct.unpack_from(e + "H", data, entry + 8)[0]
                return value if 1 <= value <= 8 else 1
    except struct.error:
        pass
    return 1


def probe_jpeg(data: bytes) -> tuple[ImageInfo | None, bool]:
    """(info, complete) of a JPEG; info None when no frame header is found."""
    n, i = len(data), 2
    width = height = 0
    orientation = 1
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None, False
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # standalone markers
            i += 2
            continue
        seglen = (data[i + 2] << 8) | data[i + 3]
        if marker in _SOF and i + 9 <= n:
            height, width = struct.unpack_from(">HH", data, i + 5)
        elif marker == 0xE1 and data[i + 4 : i + 10] == b"Exif\0\0":
            orientation = _exif_orientation(data, i + 10, min(n, i + 2 + seglen))
        elif marker == 0xDA:  # start of scan: the header is over
            if not width:
                return None, False
            # Entropy-coded data never holds FF D9 (FF is stuffed), so an end-of-image marker
            # after the scan starts exists exactly when the file is complete.
            return ImageInfo("JPEG", width, height, orientation), data.rfind(b"\xff\xd9", i) >= 0
        i += 2 + seglen
    return None, False


def probe_png(data: bytes) -> ImageInfo | None:
    """The IHDR size of a PNG; None when the header is missing or cut short."""
    if len(data) < 26 or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack_from(">II", data, 16)
    return ImageInfo("PNG", width, height)
