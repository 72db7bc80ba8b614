"""The implicit label of GB 45438-2025 in a file's metadata: a tag named `AIGC` whose value is a JSON object of the
standard's implicit-label fields, written into each container the farm stores (docs/guide/labels.md).

Each writer changes the container only: the audio bytes are copied as they are (the Ogg pages renumbered, the
FLAC and RIFF blocks moved along, the MPEG-4 packets remuxed).
"""

from __future__ import annotations

import io
import json
import struct

TAG = "AIGC"
# "1": the content is AI-generated (the standard's values: 1 is, 2 may be, 3 is suspected to be; see the guide).
LABEL_GENERATED = "1"


def implicit_label(producer: str, produce_id: str) -> str:
    """The tag's value: the fields of GB 45438-2025's implicit label (metadata), in the standard's order. The
    propagator's fields and both reserved codes are left empty: the farm produces the content, a platform that
    spreads it fills them in."""
    fields = {
        "Label": LABEL_GENERATED,
        "ContentProducer": producer,
        "ProduceID": produce_id,
        "ReservedCode1": "",
        "ContentPropagator": "",
        "PropagateID": "",
        "ReservedCode2": "",
    }
    return json.dumps(fields, ensure_ascii=False, separators=(",", ":"))


def tag(data: bytes, fmt: str, value: str) -> bytes:
    """`data` (an encoded file of the API format `fmt`) with the tag `AIGC` = `value`; pcm has no container and
    comes back as it is. A tag `AIGC` already there is replaced."""
    if fmt == "pcm":
        return data
    writer = _WRITERS.get(fmt)
    if writer is None:
        raise ValueError(f"unknown format {fmt!r}")
    return writer(data, value)


# --- WAV: a LIST/INFO chunk with an `AIGC` entry (FFmpeg shows every INFO entry under its four-letter id) ------


def _wav(data: bytes, value: str) -> bytes:
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("not a RIFF/WAVE file")
    chunks: list[bytes] = []
    pos, data_at = 12, None
    while pos + 8 <= len(data):
        cid, size = data[pos : pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        end = min(pos + 8 + size + (size & 1), len(data))
        body = data[pos:end]
        if not (cid == b"LIST" and data[pos + 8 : pos + 12] == b"INFO"):
            if cid == b"data" and data_at is None:
                data_at = len(chunks)
            chunks.append(body)
        else:  # an INFO list: kept, less any AIGC entry of its own
            kept = [e for e in _subchunks(data[pos + 12 : pos + 8 + size]) if e[:4] != TAG.encode()]
            if kept:
                chunks.append(_chunk(b"LIST", b"INFO" + b"".join(kept)))
        pos = end
    raw = value.encode("utf-8") + b"\0"
    info = _chunk(b"LIST", b"INFO" + _chunk(TAG.encode(), raw))
    # Before the audio, where a reader that does not seek past it still finds it.
    chunks.insert(len(chunks) if data_at is None else data_at, info)
    body = b"WAVE" + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _chunk(cid: bytes, body: bytes) -> bytes:
    return cid + struct.pack("<I", len(body)) + body + (b"\0" if len(body) & 1 else b"")


def _subchunks(body: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos + 8 <= len(body):
        size = struct.unpack_from("<I", body, pos + 4)[0]
        end = min(pos + 8 + size + (size & 1), len(body))
        out.append(body[pos:end])
        pos = end
    return out


# --- Vorbis comments (FLAC, Ogg Vorbis, Ogg Opus) ---------------------------------------------------------------


def _comments(packet: bytes, value: str) -> bytes:
    """A Vorbis comment list (vendor, then `KEY=value` entries) with `AIGC=value` in place of any AIGC entry."""
    buf = io.BytesIO(packet)
    vendor = buf.read(struct.unpack("<I", buf.read(4))[0])
    entries = []
    for _ in range(struct.unpack("<I", buf.read(4))[0]):
        entry = buf.read(struct.unpack("<I", buf.read(4))[0])
        if entry.partition(b"=")[0].upper() != TAG.encode():
            entries.append(entry)
    entries.append(f"{TAG}={value}".encode())
    out = [struct.pack("<I", len(vendor)), vendor, struct.pack("<I", len(entries))]
    out += [struct.pack("<I", len(e)) + e for e in entries]
    return b"".join(out)


def _flac(data: bytes, value: str) -> bytes:
    if data[:4] != b"fLaC":
        raise ValueError("not a FLAC stream")
    blocks: list[tuple[int, bytes]] = []
    pos, last = 4, False
    while not last:
        head = data[pos]
        last, kind = bool(head & 0x80), head & 0x7F
        size = int.from_bytes(data[pos + 1 : pos + 4], "big")
        blocks.append((kind, data[pos + 4 : pos + 4 + size]))
        pos += 4 + size
    comment = next((body for kind, body in blocks if kind == 4), struct.pack("<II", 0, 0))
    blocks = [b for b in blocks if b[0] != 4]
    blocks.insert(1, (4, _comments(comment, value)))  # STREAMINFO stays first
    out = [b"fLaC"]
    for i, (kind, body) in enumerate(blocks):
        out.append(bytes([kind | (0x80 if i == len(blocks) - 1 else 0)]) + len(body).to_bytes(3, "big") + body)
    return b"".join(out) + data[pos:]


_OGG_CRC = [0] * 256
for _i in range(256):
    _r = _i << 24
    for _ in range(8):
        _r = ((_r << 1) ^ 0x04C11DB7) & 0xFFFFFFFF if _r & 0x80000000 else (_r << 1) & 0xFFFFFFFF
    _OGG_CRC[_i] = _r


def _ogg_crc(page: bytes) -> int:
    crc = 0
    for byte in page:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ _OGG_CRC[((crc >> 24) & 0xFF) ^ byte]
    return crc


def _ogg_page(htype: int, granule: int, serial: int, seq: int, lacing: bytes, body: bytes) -> bytes:
    head = b"OggS" + struct.pack("<BBqIII", 0, htype, granule, serial, seq, 0) + bytes([len(lacing)]) + lacing
    page = bytearray(head + body)
    struct.pack_into("<I", page, 22, _ogg_crc(bytes(page)))
    return bytes(page)


def _ogg(data: bytes, value: str) -> bytes:
    """The comment header rewritten: the header packets are laid out on pages again and every later page is
    renumbered (its bytes otherwise as they were, its checksum recomputed). One logical stream, as libsndfile
    writes it."""
    pages: list[tuple[int, int, int, int, bytes, bytes]] = []  # (htype, granule, serial, seq, lacing, body)
    pos = 0
    while pos < len(data):
        if data[pos : pos + 4] != b"OggS":
            raise ValueError("not an Ogg stream")
        _, htype, granule, serial, seq, _ = struct.unpack_from("<BBqIII", data, pos + 4)
        nseg = data[pos + 26]
        lacing = data[pos + 27 : pos + 27 + nseg]
        start = pos + 27 + nseg
        body = data[start : start + sum(lacing)]
        pages.append((htype, granule, serial, seq, lacing, body))
        pos = start + len(body)
    if len({p[2] for p in pages}) != 1:
        raise ValueError("more than one logical Ogg stream")
    first = pages[0][5]
    headers = 3 if first.startswith(b"\x01vorbis") else 2 if first.startswith(b"OpusHead") else 0
    if not headers:
        raise ValueError("neither Vorbis nor Opus in Ogg")
    # The header packets, and the first page after them (the audio starts on a fresh page).
    packets: list[bytes] = []
    current = b""
    n = 0
    while len(packets) < headers:
        _, _, _, _, lacing, body = pages[n]
        at = 0
        for lace in lacing:
            current += body[at : at + lace]
            at += lace
            if lace < 255:
                packets.append(current)
                current = b""
        n += 1
    if current or len(packets) != headers:
        raise ValueError("audio shares a page with the Ogg headers")
    if headers == 3:  # Vorbis: type 3, "vorbis", the list, a framing bit
        packets[1] = b"\x03vorbis" + _comments(packets[1][7:], value) + b"\x01"
    else:  # Opus: "OpusTags", the list (anything after it is dropped)
        packets[1] = b"OpusTags" + _comments(packets[1][8:], value)
    serial = pages[0][2]
    out = [_ogg_page(pages[0][0], pages[0][1], serial, 0, pages[0][4], pages[0][5])]
    seq = 1
    for packet in packets[1:]:  # each on pages of its own: at most 255 lacing values a page
        laces = [255] * (len(packet) // 255) + [len(packet) % 255]
        at, cont = 0, False
        for i in range(0, len(laces), 255):
            page_laces = laces[i : i + 255]
            size = sum(page_laces)
            ends = page_laces[-1] < 255
            body = packet[at : at + size]
            out.append(_ogg_page(1 if cont else 0, 0 if ends else -1, serial, seq, bytes(page_laces), body))
            at, cont, seq = at + size, True, seq + 1
    for htype, granule, _, _, lacing, body in pages[n:]:
        out.append(_ogg_page(htype, granule, serial, seq, lacing, body))
        seq += 1
    return b"".join(out)


# --- MP3: an ID3v2.4 tag in front, with a TXXX frame whose description is AIGC ------------------------------


def _syncsafe(n: int) -> bytes:
    return bytes([(n >> 21) & 0x7F, (n >> 14) & 0x7F, (n >> 7) & 0x7F, n & 0x7F])


def _mp3(data: bytes, value: str) -> bytes:
    if data[:3] == b"ID3":
        raise ValueError("the mp3 already has an ID3v2 tag")
    body = b"\x03" + TAG.encode() + b"\0" + value.encode("utf-8")  # 3: UTF-8
    frame = b"TXXX" + _syncsafe(len(body)) + b"\0\0" + body
    return b"ID3\x04\x00\x00" + _syncsafe(len(frame)) + frame + data


# --- MPEG-4 (m4a): the packets remuxed by FFmpeg with the tag as an mdta key --------------------------------


def _m4a(data: bytes, value: str) -> bytes:
    import av

    out = io.BytesIO()
    with av.open(io.BytesIO(data), "r") as src:
        with av.open(out, "w", format="ipod", options={"movflags": "use_metadata_tags"}) as dst:
            stream = src.streams.audio[0]
            copy = dst.add_stream_from_template(stream)
            dst.metadata[TAG] = value
            for packet in src.demux(stream):
                if packet.dts is None:  # the demuxer's flush packet
                    continue
                packet.stream = copy
                dst.mux(packet)
    return out.getvalue()


_WRITERS = {"wav": _wav, "flac": _flac, "ogg": _ogg, "opus": _ogg, "mp3": _mp3, "aac": _m4a}
