"""What every stored file says about where it came from (docs/guide/labels.md): the implicit label of GB 45438-2025
as a metadata tag `AIGC` (aigc.py) in every format with a container, and a signed C2PA manifest (manifest.py) in
those C2PA carries. `label` applies both where a job's audio is encoded for storage (worker/synthesis.py)."""

from __future__ import annotations

import dataclasses
import json
import logging

from shared.audio.codecs import EXTENSIONS, Encoded
from shared.config import Settings
from shared.provenance import aigc, manifest

log = logging.getLogger(__name__)
_warned = False


def label(encoded: Encoded, produce_id: str, settings: Settings) -> Encoded:
    """`encoded` with its labels: the AIGC tag naming `settings.label_producer` and `produce_id` (the job that made
    the audio), then, when a signing certificate and key are configured, a C2PA manifest over the tagged file."""
    global _warned
    value = aigc.implicit_label(settings.label_producer, produce_id)
    data = aigc.tag(encoded.data, encoded.format, value)
    if encoded.format in manifest.MEDIA_TYPES:
        if settings.c2pa_cert and settings.c2pa_key:
            title = f"{produce_id}.{EXTENSIONS.get(encoded.format, encoded.format)}"
            definition = manifest.manifest_definition(title, json.loads(value))
            data = manifest.sign(data, encoded.format, settings.c2pa_cert, settings.c2pa_key, definition)
        elif not _warned:
            _warned = True
            log.warning("no C2PA manifests: set VOICEFARM_C2PA_CERT and VOICEFARM_C2PA_KEY to sign them")
    return dataclasses.replace(encoded, data=data)
