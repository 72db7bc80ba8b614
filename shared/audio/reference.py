"""Reference clips for cloning: decode, check, and normalise.

`inspect_upload` runs in the API so bad uploads are refused at once with a specific code, and again in the clone
job on the stored upload; `normalise` runs in the clone job and produces the clip every engine profile is built
from. Uploads are untrusted: the container header is checked (format, channels, sample rate, declared length)
before a sample is decoded, and decoding stops at 30 s of frames at the declared rate whatever the header says,
so a small file that expands to minutes of multichannel audio costs a header parse, not its decoded size.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
import soundfile as sf

from shared.audio.codecs import resample
from shared.errors import BadRequest

MIN_SECONDS = 3.0
MAX_SECONDS = 30.0
MIN_RATE = 16000
MAX_RATE = 192000
MAX_CHANNELS = 2
# Containers libsndfile reads that a recorded voice sample comes in (mp3 is decoded by libsndfile's mpg123).
UPLOAD_CONTAINERS = frozenset({"WAV", "WAVEX", "RF64", "W64", "AIFF", "FLAC", "OGG", "MP3"})
_BLOCK_FRAMES = 65536
REFERENCE_RATE = 24000
# Speech quieter than this (RMS, dBFS) is treated as silence.
SILENCE_DBFS = -50.0
# Share of samples at full scale beyond which a clip is too distorted to clone from.
MAX_CLIPPED = 0.02
WARN_CLIPPED = 0.001
TARGET_RMS_DBFS = -20.0
PEAK_LIMIT = 0.95


@dataclass
class Clip:
    audio: np.ndarray  # float32 mono
    sample_rate: int
    channels: int
    warnings: list[str] = field(default_factory=list)

    @property
    def duration_s(self) -> float:
        return len(self.audio) / self.sample_rate


def _dbfs(x: np.ndarray) -> float:
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if len(x) else 0.0
    return 20 * np.log10(max(rms, 1e-10))


def check_header(container: str, rate: int, channels: int, frames: int) -> None:
    """Refuse what a container header declares beyond the limits: format, channels, sample rate, duration.

    Runs before a sample is decoded, so a small file that declares minutes of audio or dozens of channels (an
    upload bomb) is refused for what it claims at the cost of parsing its header.
    """
    if container not in UPLOAD_CONTAINERS:
        raise BadRequest(
            f"{container} files are not accepted; send WAV, FLAC, OGG or MP3", code="unsupported_audio_format"
        )
    if channels > MAX_CHANNELS:
        raise BadRequest(
            f"the clip has {channels} channels; at most {MAX_CHANNELS} are accepted", code="too_many_channels"
        )
    if rate < MIN_RATE:
        raise BadRequest(f"the sample rate is {rate} Hz; at least {MIN_RATE} Hz is needed", code="sample_rate_too_low")
    if rate > MAX_RATE:
        raise BadRequest(
            f"the sample rate is {rate} Hz; at most {MAX_RATE} Hz is accepted", code="sample_rate_too_high"
        )
    if frames > max_frames(rate):
        # An unknown length (libsndfile reports the largest count) is refused too: nothing vouches for it.
        length = f"{frames / rate:.1f} s" if frames < 2**62 else "of unknown length"
        raise BadRequest(f"the clip is {length}; at most {MAX_SECONDS:.0f} s is allowed", code="audio_too_long")


def max_frames(rate: int) -> int:
    """The most frames a clip at this rate may hold: decoding never goes further, whatever the header says."""
    return int(MAX_SECONDS * rate)


def decode_upload(data: bytes) -> tuple[np.ndarray, int, int]:
    """Check the header, then decode to float32 mono with a frame cap: (audio, sample rate, channels)."""
    if not data:
        raise BadRequest("the audio file is empty", code="empty_audio")
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            check_header(f.format, f.samplerate, f.channels, f.frames)
            return read_mono(f, max_frames(f.samplerate)), f.samplerate, f.channels
    except (sf.LibsndfileError, RuntimeError, ValueError, TypeError) as exc:
        raise BadRequest(
            "the audio could not be decoded; send WAV, FLAC, OGG or MP3", code="undecodable_audio"
        ) from exc


def read_mono(f: sf.SoundFile, cap: int) -> np.ndarray:
    """Decode block by block, mixing down as it goes: peak memory is the mono clip plus one block, and at most
    `cap` frames are kept even if the decoder delivers more than the header declared."""
    out = np.empty(min(f.frames, cap) + 1, dtype=np.float32)
    filled = 0
    while filled < len(out):
        block = f.read(min(_BLOCK_FRAMES, len(out) - filled), dtype="float32", always_2d=True)
        if not len(block):
            break
        out[filled : filled + len(block)] = block.mean(axis=1) if block.shape[1] > 1 else block[:, 0]
        filled += len(block)
    if filled > cap:
        raise BadRequest(f"the clip is longer than {MAX_SECONDS:.0f} s, the most allowed", code="audio_too_long")
    return out[:filled]


def inspect_upload(data: bytes) -> Clip:
    """Check the header, decode with a frame cap, then check the samples; raise `BadRequest` with a specific code
    when the clip cannot be used. The API and the clone worker both call this, so both get the same limits."""
    audio, rate, channels = decode_upload(data)
    if audio.size == 0 or not np.all(np.isfinite(audio)):
        raise BadRequest("the audio holds no usable samples", code="undecodable_audio")
    clip = Clip(audio=audio, sample_rate=rate, channels=channels)
    if clip.duration_s < MIN_SECONDS:
        raise BadRequest(
            f"the clip is {clip.duration_s:.1f} s; at least {MIN_SECONDS:.0f} s is needed", code="audio_too_short"
        )
    if clip.duration_s > MAX_SECONDS:
        raise BadRequest(
            f"the clip is {clip.duration_s:.1f} s; at most {MAX_SECONDS:.0f} s is allowed", code="audio_too_long"
        )
    if _dbfs(clip.audio) < SILENCE_DBFS:
        raise BadRequest("the clip is silent", code="silent_audio")
    clipped = float(np.mean(np.abs(clip.audio) >= 0.999))
    if clipped > MAX_CLIPPED:
        raise BadRequest(f"{clipped:.1%} of the samples are clipped; record at a lower level", code="clipped_audio")
    if clipped > WARN_CLIPPED:
        clip.warnings.append(f"{clipped:.2%} of the reference samples are clipped")
    if clip.channels > 1:
        clip.warnings.append(f"mixed {clip.channels} channels down to mono")
    return clip


def trim_silence(audio: np.ndarray, rate: int, pad_s: float = 0.1) -> np.ndarray:
    """Cut leading and trailing stretches whose 20 ms frames are 40 dB below the loudest frame."""
    frame = max(1, int(0.02 * rate))
    n = len(audio) // frame
    if n == 0:
        return audio
    energy = np.sqrt(np.mean(np.square(audio[: n * frame].reshape(n, frame)), axis=1))
    loud = np.nonzero(energy > energy.max() * 10 ** (-40 / 20))[0]
    pad = int(pad_s * rate)
    start = max(0, loud[0] * frame - pad)
    end = min(len(audio), (loud[-1] + 1) * frame + pad)
    return audio[start:end]


def normalise(clip: Clip) -> Clip:
    """Trim silence, resample to the reference rate, and bring speech to a common loudness."""
    audio = trim_silence(clip.audio, clip.sample_rate)
    audio = resample(audio, clip.sample_rate, REFERENCE_RATE)
    speech_s = len(audio) / REFERENCE_RATE
    if speech_s < MIN_SECONDS:
        raise BadRequest(
            f"only {speech_s:.1f} s of speech remain after trimming silence; at least {MIN_SECONDS:.0f} s is needed",
            code="audio_too_short",
        )
    gain = 10 ** ((TARGET_RMS_DBFS - _dbfs(audio)) / 20)
    peak = float(np.abs(audio).max()) * gain
    if peak > PEAK_LIMIT:
        gain *= PEAK_LIMIT / peak
    out = (audio * gain).astype(np.float32)
    return Clip(audio=out, sample_rate=REFERENCE_RATE, channels=1, warnings=list(clip.warnings))


def to_wav(clip: Clip) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, clip.audio, clip.sample_rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()
