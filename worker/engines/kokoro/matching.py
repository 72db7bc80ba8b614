"""Voice matching for kokoro: Kokoro-82M cannot clone, so a reference is matched and then approximated.

1. Nearest stock voice by speaker embedding: GE2E (resemblyzer's encoder, `worker.evaluators.similarity`) cosine between
   the reference and each stock voice reading fixed calibration sentences.
2. A WORLD-vocoder transform (pyworld: DIO + StoneMask F0, CheapTrick envelope, D4C aperiodicity, 24 kHz, 5 ms
   frames) of everything the chosen voice says, toward the reference:
   - pitch: log-F0 moved from the voice's calibration mean toward the reference mean (at most an octave), its
     spread scaled by the ratio of standard deviations (clamped to 0.5-2), both by a `pitch` fraction;
   - vocal-tract length: the spectral envelope's frequency axis stretched by `warp` (formants move by it);
   - envelope: a per-frequency gain, the smoothed difference of the reference's and the (warped) voice's mean
     log envelope over voiced frames with the overall level removed, scaled by `envelope`, clamped to +-12 dB.
   `pitch`, `warp` and `envelope` are tuned once at clone time by analysis by synthesis: the calibration render
   is transformed with candidate settings and the setting whose output embedding is nearest to the reference's
   wins (coordinate ascent; the untransformed voice is a candidate too, so the transform never scores worse on
   the calibration than the plain stock voice).
3. Optionally (`search_blend`, before step 2): a search in Kokoro's style-vector space. A voice pack is a (510, 256)
   array of style vectors; a blend is a weighted sum of the stock packs (weights sum to 1, a negative weight
   moves away from a voice). Greedy steps from the nearest stock voice toward and away from each other voice,
   each blend scored by the similarity of a rendered probe sentence to the fitting clip, within a render budget;
   the plain nearest voice stays a candidate. The WORLD transform is then tuned on the best blend's probe.

A profile is JSON bytes: the chosen stock voice, how it was chosen, the reference's embedding (so every output
can report its speaker similarity), the transform and (version 3) the blend weights. Versions 1 (stock voice
only) and 2 (no blend) still load.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

PROFILE_FORMAT = "voicefarm.kokoro.voice"
PROFILE_VERSION = 3
BLEND_STEPS = (0.5, 0.25)  # greedy step sizes of the style-vector search, coarse then fine
BLEND_RENDERS = 16  # probe renders one search may spend (clone time: about one render and embedding each)
MAX_AWAY = 0.5  # the most negative weight a blend may give a stock voice
RATE = 24_000
FRAME_PERIOD_MS = 5.0
F0_FLOOR, F0_CEIL = 60.0, 700.0
MIN_VOICED_FRAMES = 100  # 0.5 s of voiced speech; white noise gets ~30 spurious voiced frames in 3 s
GAIN_POINTS = 129  # envelope gain stored every 93.75 Hz from 0 to 12 kHz
MAX_GAIN_NEPERS = math.log(10 ** (12 / 20))
MAX_SHIFT = math.log(2.0)
SMOOTH_HZ = 400.0
WARPS = (0.84, 0.88, 0.92, 0.96, 1.0, 1.05, 1.1, 1.15, 1.2)
PITCHES = (0.0, 0.5, 1.0)
ENVELOPES = (0.0, 0.5, 1.0, 1.5)


@dataclass
class World:
    """WORLD analysis of a clip at 24 kHz: F0 per 5 ms frame (0 when unvoiced), envelope, aperiodicity."""

    f0: np.ndarray
    sp: np.ndarray
    ap: np.ndarray

    @property
    def voiced(self) -> np.ndarray:
        return self.f0 > 0

    def log_f0_stats(self) -> tuple[float, float]:
        log_f0 = np.log(self.f0[self.voiced])
        return float(log_f0.mean()), float(max(log_f0.std(), 1e-3))

    def mean_envelope(self) -> np.ndarray:
        """Mean log spectral envelope over voiced frames (CheapTrick bins, 0-12 kHz)."""
        return np.asarray(np.log(self.sp[self.voiced] + 1e-12).mean(axis=0))


def analyse(audio: np.ndarray, sample_rate: int = RATE) -> World:
    import pyworld

    x = np.asarray(audio, dtype=np.float64).reshape(-1)
    if sample_rate != RATE:
        import soxr

        x = np.asarray(soxr.resample(x, sample_rate, RATE), dtype=np.float64)
    f0, times = pyworld.dio(x, RATE, f0_floor=F0_FLOOR, f0_ceil=F0_CEIL, frame_period=FRAME_PERIOD_MS)
    f0 = pyworld.stonemask(x, f0, times, RATE)
    sp = pyworld.cheaptrick(x, f0, times, RATE)  # fft 1024 at 24 kHz, like d4c
    ap = pyworld.d4c(x, f0, times, RATE)
    return World(f0=f0, sp=sp, ap=ap)


def check_voiced(world: World) -> None:
    count = int(world.voiced.sum())
    if count < MIN_VOICED_FRAMES:
        raise ValueError(f"the reference has too little voiced speech to match a voice ({count} voiced frames of 5 ms)")


def _warp(log_env: np.ndarray, factor: float) -> np.ndarray:
    """Stretch the frequency axis of log envelopes (last axis) by `factor`: what sat at f moves to f * factor."""
    bins = np.arange(log_env.shape[-1], dtype=np.float64)
    source = np.clip(bins / factor, 0, bins[-1])
    low = np.floor(source).astype(int)
    high = np.minimum(low + 1, len(bins) - 1)
    frac = source - low
    return np.asarray(log_env[..., low] * (1 - frac) + log_env[..., high] * frac)


def _smooth(values: np.ndarray, width: int) -> np.ndarray:
    kernel = np.hanning(width + 2)[1:-1]
    kernel /= kernel.sum()
    padded = np.pad(values, (width // 2, width - 1 - width // 2), mode="edge")
    return np.asarray(np.convolve(padded, kernel, mode="valid"))


def _resize(values: np.ndarray, size: int) -> np.ndarray:
    return np.interp(np.linspace(0, 1, size), np.linspace(0, 1, len(values)), values)


@dataclass(frozen=True)
class Transform:
    """The per-voice WORLD transform; `apply` runs it on any audio the base voice speaks."""

    source_log_f0: tuple[float, float]  # the base voice's calibration mean and std of log F0
    target_log_f0: tuple[float, float]  # the reference's
    gain: tuple[float, ...]  # full-strength log gain per frequency, GAIN_POINTS over 0-12 kHz
    pitch: float = 1.0
    warp: float = 1.0
    envelope: float = 1.0

    @property
    def identity(self) -> bool:
        return self.pitch == 0 and self.warp == 1.0 and self.envelope == 0

    def f0(self, f0: np.ndarray) -> np.ndarray:
        (src_mean, src_std), (ref_mean, ref_std) = self.source_log_f0, self.target_log_f0
        shift = float(np.clip(ref_mean - src_mean, -MAX_SHIFT, MAX_SHIFT)) * self.pitch
        scale = float(np.clip(ref_std / src_std, 0.5, 2.0)) ** self.pitch
        out = f0.copy()
        voiced = f0 > 0
        out[voiced] = np.exp(src_mean + shift + (np.log(f0[voiced]) - src_mean) * scale)
        return out

    def envelope_gain(self, bins: int) -> np.ndarray:
        gain = _resize(np.asarray(self.gain), bins) * self.envelope
        return np.clip(gain, -MAX_GAIN_NEPERS, MAX_GAIN_NEPERS)

    def apply_world(self, world: World) -> np.ndarray:
        import pyworld

        log_sp = np.log(world.sp + 1e-12)
        if self.warp != 1.0:
            log_sp = _warp(log_sp, self.warp)
        if self.envelope:
            log_sp = log_sp + self.envelope_gain(log_sp.shape[1])[None, :]
        f0, sp, ap = (np.ascontiguousarray(a) for a in (self.f0(world.f0), np.exp(log_sp), world.ap))
        audio = pyworld.synthesize(f0, sp, ap, RATE, FRAME_PERIOD_MS)
        return np.asarray(audio, dtype=np.float64)

    def apply(self, audio: np.ndarray) -> np.ndarray:
        """Transformed float32 audio at 24 kHz, at the loudness of the input, peaks kept within +-0.99."""
        if self.identity or audio.size < RATE * FRAME_PERIOD_MS / 1000 * 4:
            return audio
        world = analyse(audio)
        if not world.voiced.any():
            return audio
        out = self.apply_world(world)[: audio.size]
        return _level_like(np.pad(out, (0, audio.size - out.size)), audio)

    def to_json(self) -> dict[str, Any]:
        payload = asdict(self)
        payload["gain"] = [round(g, 4) for g in self.gain]
        return payload

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> Transform:
        src, ref, gain = (tuple(float(v) for v in payload[k]) for k in ("source_log_f0", "target_log_f0", "gain"))
        if len(src) != 2 or len(ref) != 2 or len(gain) != GAIN_POINTS:
            raise ValueError("kokoro profile has a malformed transform")

        def clipped(key: str, low: float, high: float) -> float:
            return float(np.clip(float(payload.get(key, 1.0)), low, high))

        strengths = clipped("pitch", 0, 1), clipped("warp", 0.7, 1.4), clipped("envelope", 0, max(ENVELOPES))
        return cls((src[0], src[1]), (ref[0], ref[1]), gain, *strengths)


def _level_like(audio: np.ndarray, like: np.ndarray) -> np.ndarray:
    rms = float(np.sqrt(np.mean(np.square(audio)))) if audio.size else 0.0
    want = float(np.sqrt(np.mean(np.square(like, dtype=np.float64))))
    out = audio * (want / rms if rms > 1e-9 else 0.0)
    peak = float(np.abs(out).max()) if out.size else 0.0
    if peak > 0.99:
        out *= 0.99 / peak
    return out.astype(np.float32)


def design(reference: World, voice: World, pitch: float, warp: float, envelope: float) -> Transform:
    """The transform of `voice` toward `reference` with the given strengths (envelope gain fitted after warping)."""
    bins = voice.sp.shape[1]
    diff = reference.mean_envelope() - _warp(voice.mean_envelope(), warp)
    width = max(3, int(round(SMOOTH_HZ / (RATE / 2 / (bins - 1)))))
    diff = _smooth(diff, width)
    gain = np.clip(diff - diff.mean(), -MAX_GAIN_NEPERS, MAX_GAIN_NEPERS)
    return Transform(
        source_log_f0=voice.log_f0_stats(),
        target_log_f0=reference.log_f0_stats(),
        gain=tuple(float(g) for g in _resize(gain, GAIN_POINTS)),
        pitch=pitch,
        warp=warp,
        envelope=envelope,
    )


def tune(
    reference: World, voice: World, calibration: np.ndarray, score: Callable[[np.ndarray], float]
) -> tuple[Transform, float, float]:
    """Coordinate ascent over (warp, envelope, pitch) maximising `score` of the transformed calibration render.

    Returns the best transform, its score, and the score of the untransformed render.
    """
    plain = score(calibration)
    settings = {"pitch": 1.0, "warp": 1.0, "envelope": 1.0}
    cache: dict[tuple[float, float, float], float] = {}

    def evaluate(pitch: float, warp: float, envelope: float) -> float:
        key = (pitch, warp, envelope)
        if key not in cache:
            transform = design(reference, voice, *key)
            cache[key] = (
                plain
                if transform.identity
                else score(_level_like(transform.apply_world(voice)[: calibration.size], calibration))
            )
        return cache[key]

    def refine(axis: str, values: tuple[float, ...]) -> None:
        results = {v: evaluate(**{**settings, axis: v}) for v in values}
        settings[axis] = max(results, key=results.__getitem__)

    refine("warp", WARPS)
    refine("envelope", ENVELOPES)
    refine("pitch", PITCHES)
    warp = settings["warp"]
    refine("warp", (round(warp / 1.02, 3), warp, round(warp * 1.02, 3)))
    best = evaluate(**settings)
    if best < plain:
        settings = {"pitch": 0.0, "warp": 1.0, "envelope": 0.0}
    return design(reference, voice, **settings), max(best, plain), plain


# Honest similarity: a reference at least this long is split; the voice is fitted to its first part and every
# output is scored against the held-out rest (HOLD_OUT_SHARE of it), speech the match never saw.
HOLD_OUT_MIN_S = 9.0
HOLD_OUT_SHARE = 0.35


def split_reference(audio: np.ndarray, rate: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(fitting part, held-out part), cut at the quietest 20 ms near the boundary so no word is split; the whole
    clip and None when it is too short to spare a held-out part."""
    n = len(audio)
    if n < HOLD_OUT_MIN_S * rate:
        return audio, None
    target, frame, window = int(n * (1 - HOLD_OUT_SHARE)), int(0.02 * rate), int(0.75 * rate)
    starts = np.arange(max(0, target - window), min(n - frame, target + window), frame // 2)
    energy = [float(np.mean(np.square(audio[s : s + frame], dtype=np.float64))) for s in starts]
    cut = int(starts[int(np.argmin(energy))]) + frame // 2
    return audio[:cut], audio[cut:]


# -- style-vector search -----------------------------------------------------------------------------------------
def blend_pack(packs: dict[str, np.ndarray], weights: dict[str, float]) -> np.ndarray:
    """The voice pack of a blend: the weighted sum of stock packs, style vector by style vector."""
    return np.asarray(sum(w * packs[name] for name, w in weights.items()), dtype=np.float32)


def blend_key(weights: dict[str, float]) -> str:
    """A stable name for a blend (what the engine registers its pack under)."""
    return "blend:" + ",".join(f"{name}={w:.4f}" for name, w in sorted(weights.items()) if abs(w) > 1e-6)


def _step(weights: dict[str, float], toward: str, step: float) -> dict[str, float]:
    """Move the blend by `step` toward one voice (a negative step moves away from it); weights still sum to 1."""
    out = {name: w * (1 - step) for name, w in weights.items()}
    out[toward] = out.get(toward, 0.0) + step
    return {name: round(w, 4) for name, w in out.items() if abs(w) > 1e-6}


def search_blend(
    base: str,
    voices: tuple[str, ...],
    score: Callable[[dict[str, float]], float],
    budget: int = BLEND_RENDERS,
) -> tuple[dict[str, float], float, float, int]:
    """Greedy search over blends of `voices` starting at `base`, maximising `score` (one probe render each).

    One round per step size: a step toward and one away from every voice, then a move to the best blend if it
    beats the current one. Returns (best weights, its score, the base voice's score, renders spent);
    the base voice alone is scored first, so the result never scores below it.
    """
    current = {base: 1.0}
    best = plain = score(current)
    spent, seen = 1, {blend_key(current)}
    for step in BLEND_STEPS:
        results: list[tuple[float, dict[str, float]]] = []
        for name in voices:
            for signed in (step, -step):
                candidate = _step(current, name, signed)
                key = blend_key(candidate)
                if key in seen or min(candidate.values()) < -MAX_AWAY or spent >= budget:
                    continue
                seen.add(key)
                results.append((score(candidate), candidate))
                spent += 1
        if results:
            top, weights = max(results, key=lambda r: r[0])
            if top > best:
                best, current = top, weights
    return current, best, plain, spent


@dataclass(frozen=True)
class VoiceMatch:
    base_voice: str
    similarities: dict[str, float]  # reference vs each stock voice's calibration render
    embedding: tuple[float, ...]  # the speaker embedding of the reference (its fitting part, when split)
    transform: Transform | None
    calibration_scores: tuple[float, float] = (0.0, 0.0)  # (stock voice, transformed) similarity on calibration
    held_out: tuple[float, ...] | None = None  # the embedding of the held-out part or of the second clip
    held_out_source: str = "held_out"  # which of the two: "held_out" (the reference's tail) or "second_clip"
    blend: dict[str, float] | None = None  # style-vector weights per stock voice; None: the base voice's own pack
    method: str = "ge2e-nearest+world"

    def to_bytes(self) -> bytes:
        payload = {
            "format": PROFILE_FORMAT,
            "version": PROFILE_VERSION,
            "base_voice": self.base_voice,
            "match": {
                "method": self.method,
                "similarities": {name: round(s, 4) for name, s in self.similarities.items()},
                "distances": {name: round(1.0 - s, 4) for name, s in self.similarities.items()},
                "calibration_similarity": {"stock": round(self.calibration_scores[0], 4),
                                           "matched": round(self.calibration_scores[1], 4)},
            },
            "reference": {
                "embedding": [round(v, 5) for v in self.embedding],
                **({"held_out": [round(v, 5) for v in self.held_out],
                    "held_out_source": self.held_out_source} if self.held_out else {}),
            },
            "transform": self.transform.to_json() if self.transform else None,
            "blend": {name: round(w, 4) for name, w in self.blend.items()} if self.blend else None,
        }  # fmt: skip
        return json.dumps(payload, ensure_ascii=False, sort_keys=True).encode("utf-8")


def nearest_voice(reference: np.ndarray, voices: dict[str, np.ndarray]) -> tuple[str, dict[str, float]]:
    """The stock voice whose embedding has the highest cosine with the reference's, and every cosine."""
    if not voices:
        raise ValueError("no stock voices to match against")
    ref = np.asarray(reference, dtype=np.float64)
    sims = {
        name: float(ref @ emb / max(float(np.linalg.norm(ref) * np.linalg.norm(emb)), 1e-12))
        for name, emb in voices.items()
    }
    return max(sims, key=sims.__getitem__), sims


@dataclass(frozen=True)
class Profile:
    base_voice: str
    embedding: np.ndarray | None
    transform: Transform | None
    held_out: np.ndarray | None = None
    blend: dict[str, float] | None = None
    held_out_source: str = "held_out"

    def similarity_target(self) -> tuple[np.ndarray | None, str]:
        """What outputs are scored against, and its name: speech the voice was not fitted to when there is some
        (the reference's held-out part, or a second clip), else the fitted clip itself."""
        if self.held_out is not None:
            return self.held_out, self.held_out_source
        return self.embedding, "fitting_clip"


def parse_profile(data: bytes) -> Profile:
    """A kokoro profile (version 1 or 2); ValueError for anything that is not such a profile."""
    try:
        payload = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError("voice profile is not a kokoro profile (not JSON)") from None
    if not isinstance(payload, dict) or payload.get("format") != PROFILE_FORMAT:
        raise ValueError("voice profile is not a kokoro profile (unknown format)")
    version = payload.get("version")
    if version not in (1, 2, PROFILE_VERSION):
        raise ValueError(f"unsupported kokoro profile version {version!r}")
    base = payload.get("base_voice")
    if not isinstance(base, str):
        raise ValueError("kokoro profile has no base_voice")
    if version == 1:
        return Profile(base_voice=base, embedding=None, transform=None)
    try:
        embedding = np.asarray(payload["reference"]["embedding"], dtype=np.float32)
        transform = Transform.from_json(payload["transform"]) if payload.get("transform") else None
        held = payload["reference"].get("held_out")
        held_out = np.asarray(held, dtype=np.float32) if held is not None else None
        held_out_source = str(payload["reference"].get("held_out_source") or "held_out")
        blend = _parse_blend(payload.get("blend"))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"kokoro profile is malformed: {exc}") from None
    if embedding.shape != (256,) or (held_out is not None and held_out.shape != (256,)):
        raise ValueError("kokoro profile has a malformed reference embedding")
    if held_out_source not in ("held_out", "second_clip"):
        raise ValueError(f"kokoro profile has an unknown held_out_source {held_out_source!r}")
    return Profile(
        base_voice=base,
        embedding=embedding,
        transform=transform,
        held_out=held_out,
        blend=blend,
        held_out_source=held_out_source,
    )


def _parse_blend(raw: Any) -> dict[str, float] | None:
    if raw is None:
        return None
    weights = {str(name): float(w) for name, w in dict(raw).items()}
    if not weights or abs(sum(weights.values()) - 1.0) > 1e-3 or min(weights.values()) < -MAX_AWAY - 1e-3:
        raise ValueError("blend weights must sum to 1 and none be below -0.5")
    return weights


def profile_base_voice(data: bytes) -> str:
    """The stock voice a kokoro profile speaks with; ValueError for anything that is not such a profile."""
    return parse_profile(data).base_voice
