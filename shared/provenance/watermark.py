"""The imperceptible watermark in every take: Resemble AI's Perth network (resemble-perth 1.0.1, its "implicit"
model, MIT), run in numpy from the weights its wheel ships (docs/guide/labels.md, docs/benchmarks/watermark.md).

Why numpy: Perth itself runs on torch and imports `torchaudio.transforms`, and no torchaudio loads beside the CPU
torch the farm could install; the farm's CPU runtime is torch-free (the speaker encoder runs in numpy the same way,
worker/evaluators/similarity.py). The package is installed without its requirements and never imported: only its
checkpoint file is read. tests/worker/test_watermark_upstream.py proves this module equal to Perth itself, run
with torch and torchaudio in the cosyvoice environment.

The checkpoint is torch's zip serialisation: `archive/data.pkl`, a pickle of `{"model": state_dict, "step": n}`
whose tensors point at storages by persistent id, and each storage's raw little-endian bytes in `archive/data/<key>`.
A restricted unpickler maps torch's tensor-rebuild function and storage classes to numpy; any other global is refused.

What the network does (read from Perth's source; hyper-parameters from the `hparams.yaml` beside the weights):
- audio at 32 kHz; a centred STFT with reflect padding, Hann window of 2048, hop 320 (100 frames a second);
- magnitudes as dB floored at 1e-9, scaled to `(dB + 180) / 195`;
- a frame takes part when its summed scaled magnitude exceeds 5 % of the loudest frame's (digital silence does not);
- the embedder, on the lowest 128 bins (0-2 kHz): Conv1d 128->256 (k 1), five Conv1d 256->256 (k 7, same
  padding), each followed by LeakyReLU(0.01), then Conv1d 256->128 (k 1); its output, zeroed on frames that do not
  take part, is added to the scaled magnitudes; the audio is rebuilt with the original phases (inverse STFT);
- the detector, on the same 128 bins: three branches of the same shape (output 2 channels: attention, mark), run on
  the frames stretched to 1.25x, as they are and squeezed to 0.75x (linear interpolation, corners aligned); each
  branch's two channels are averaged over the frames that take part, the three marks weighted by the softmax of the
  three attentions; the score is that, clipped to 0-1. Marked audio scores near 1, other audio near 0.

Two choices of the farm's own, both outside the network: only the lowest 128 bins change, so the mark is added as
the inverse STFT of their change (the inverse STFT is linear and the untouched bins give the audio back), and at a
rate other than 32 kHz only that difference is resampled back, so the audio itself never makes a round trip through
another rate. Perth resamples the whole marked signal back and drops the last partial hop; here the take keeps its
length, sample for sample. And the take's sample peak is kept: where the mark would raise it (past the true-peak
ceiling mastering set, or past full scale), those samples are held at the peak it had, so its loudness stays.
"""

from __future__ import annotations

import importlib.util
import pickle
import threading
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soxr
from scipy.signal import resample_poly

RATE = 32_000
N_FFT = 2048
HOP = 320
SUBBAND = 128  # round(1025 bins * 2 kHz / 16 kHz)
FLOOR_DB = 20.0 * np.log10(1e-9)  # -180 dB
HEADROOM_DB = 15.0
FRAME_SHARE = 0.05
LEAK = 0.01
# Marked audio scores near 1 and other audio near 0; the middle decides (docs/benchmarks/watermark.md).
THRESHOLD = 0.5
# Frames per block when the STFT of a long file is taken: bounds memory to a few MB per block.
_BLOCK = 2048
_WEIGHTS = "perth_net/pretrained/implicit/perth_net_250000.pth.tar"
_DTYPES = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "LongStorage": np.int64, "IntStorage": np.int32}
_WINDOW = (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(N_FFT) / N_FFT)).astype(np.float64)  # periodic Hann


def weights_path() -> Path:
    """Perth's checkpoint inside the installed `resemble-perth` wheel (found without importing it: it imports torch)."""
    spec = importlib.util.find_spec("perth")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the watermark needs the Perth weights: install resemble-perth==1.0.1 (--no-deps)")
    return Path(next(iter(spec.submodule_search_locations))) / _WEIGHTS


# -- torch zip checkpoint -> numpy -------------------------------------------------------------------------------
@dataclass
class _Pending:
    """A tensor as the pickle describes it, read once its storage's bytes are known."""

    key: str
    dtype: np.dtype[Any]
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


class _StorageKind:
    def __init__(self, name: str) -> None:
        self.dtype = np.dtype(_DTYPES[name])


def _rebuild(storage: tuple[str, np.dtype[Any]], offset: int, size: Any, stride: Any, *_: Any) -> _Pending:
    return _Pending(storage[0], storage[1], offset, tuple(size), tuple(stride))


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild
        if module == "torch" and name in _DTYPES:
            return _StorageKind(name)
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        raise pickle.UnpicklingError(f"unexpected global {module}.{name} in the watermark weights")

    def persistent_load(self, pid: Any) -> Any:
        kind, storage_kind, key, _location, _numel = pid
        if kind != "storage" or not isinstance(storage_kind, _StorageKind):
            raise pickle.UnpicklingError(f"unsupported storage reference {pid!r}")
        return (str(key), storage_kind.dtype)


def load_state_dict(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a zip-format torch checkpoint's `model` state dict, as float32 numpy arrays."""
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        prefix = names[0].split("/", 1)[0]
        with archive.open(f"{prefix}/data.pkl") as handle:
            checkpoint = _Unpickler(handle).load()
        out: dict[str, np.ndarray] = {}
        for name, pending in checkpoint["model"].items():
            raw = np.frombuffer(archive.read(f"{prefix}/data/{pending.key}"), dtype=pending.dtype.newbyteorder("<"))
            item = raw.itemsize
            view = np.lib.stride_tricks.as_strided(
                raw[pending.offset :], shape=pending.size, strides=tuple(s * item for s in pending.stride)
            )
            out[name] = np.array(view, dtype=np.float32)
    return out


# -- the network ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Conv:
    """Conv1d over (frames, channels), centred, zero padding: one matrix product over each frame's window of
    `width` frames (`matrix` is (in * width, out), rows ordered channel-major like torch's weight)."""

    matrix: np.ndarray  # float32
    bias: np.ndarray  # (out,)
    width: int
    act: bool

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.width == 1:
            y = x @ self.matrix
        else:
            half = self.width // 2
            padded = np.pad(x, ((half, half), (0, 0)))
            windows = np.lib.stride_tricks.sliding_window_view(padded, self.width, axis=0)  # (frames, in, width)
            y = windows.reshape(len(x), -1) @ self.matrix
        y += self.bias
        if self.act:
            np.maximum(y, LEAK * y, out=y)
        return y


def _stack(state: dict[str, np.ndarray], prefix: str) -> list[_Conv]:
    layers = []
    for i in range(7):
        weight = state[f"{prefix}.{i}.conv.weight"]  # (out, in, width)
        out, _in, width = weight.shape
        matrix = np.ascontiguousarray(weight.transpose(1, 2, 0).reshape(-1, out))
        layers.append(_Conv(matrix, state[f"{prefix}.{i}.conv.bias"], width, i < 6))
    return layers


def _run(layers: list[_Conv], x: np.ndarray) -> np.ndarray:
    # One BLAS thread: a worker process runs beside others, one per core (as the engine's own threads are set).
    with _blas().limit(limits=1, user_api="blas"):
        for layer in layers:
            x = layer(x)
    return x


_controller: Any = None


def _blas() -> Any:
    global _controller
    if _controller is None:
        from threadpoolctl import ThreadpoolController

        _controller = ThreadpoolController()
    return _controller


@dataclass(frozen=True)
class Network:
    embedder: list[_Conv]
    slow: list[_Conv]
    normal: list[_Conv]
    fast: list[_Conv]

    @classmethod
    def load(cls, path: Path | None = None) -> Network:
        state = load_state_dict(path or weights_path())
        return cls(
            _stack(state, "encoder.layers"),
            _stack(state, "decoder.slow_layers"),
            _stack(state, "decoder.normal_layers"),
            _stack(state, "decoder.fast_layers"),
        )


_network: Network | None = None
_lock = threading.Lock()


def network() -> Network:
    """The network, loaded once per process (about 9 M parameters, 37 MB)."""
    global _network
    with _lock:
        if _network is None:
            _network = Network.load()
        return _network


# -- spectra --------------------------------------------------------------------------------------------------------
def _frames(signal: np.ndarray) -> np.ndarray:
    """Windowed STFT frames of a centred, reflect-padded signal: (frames, N_FFT) views, 1 + len // HOP of them."""
    half = N_FFT // 2
    if len(signal) <= half:  # reflect padding needs more samples than it adds
        signal = np.pad(signal, (0, half + 1 - len(signal)))
    padded = np.pad(signal.astype(np.float64), half, mode="reflect")
    count = 1 + (len(padded) - N_FFT) // HOP
    return np.lib.stride_tricks.as_strided(padded, shape=(count, N_FFT), strides=(HOP * 8, 8), writeable=False)


def _analyse(signal: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per frame: the summed scaled magnitude over all bins, the scaled magnitudes of the lowest SUBBAND bins and
    their complex spectrum (for the inverse STFT of a change). Long signals go in blocks of frames."""
    frames = _frames(signal)
    sums = np.empty(len(frames))
    sub = np.empty((len(frames), SUBBAND))
    spectrum = np.empty((len(frames), SUBBAND), dtype=np.complex128)
    for start in range(0, len(frames), _BLOCK):
        block = np.fft.rfft(frames[start : start + _BLOCK] * _WINDOW, axis=1)
        scaled = (20.0 * np.log10(np.maximum(np.abs(block), 1e-9)) - FLOOR_DB) / (HEADROOM_DB - FLOOR_DB)
        end = start + len(block)
        sums[start:end] = scaled.sum(axis=1)
        sub[start:end] = scaled[:, :SUBBAND]
        spectrum[start:end] = block[:, :SUBBAND]
    return sums, sub, spectrum


def _taking_part(sums: np.ndarray) -> np.ndarray:
    return (sums > sums.max() * FRAME_SHARE).astype(np.float32)


def _unscale(scaled: np.ndarray) -> np.ndarray:
    return 10.0 ** (np.minimum((scaled * (HEADROOM_DB - FLOOR_DB) + FLOOR_DB) / 20.0, 10.0))


def _inverse(change: np.ndarray, length: int) -> np.ndarray:
    """The inverse STFT (window-squared normalised overlap-add, centred) of spectra whose bins above SUBBAND are 0."""
    count = len(change)
    total = N_FFT + HOP * (count - 1)
    out = np.zeros(total)
    envelope = np.zeros(total)
    square = _WINDOW**2
    for start in range(0, count, _BLOCK):
        block = change[start : start + _BLOCK]
        full = np.zeros((len(block), N_FFT // 2 + 1), dtype=np.complex128)
        full[:, :SUBBAND] = block
        frames = np.fft.irfft(full, n=N_FFT, axis=1) * _WINDOW
        for i, frame in enumerate(frames, start):
            at = i * HOP
            out[at : at + N_FFT] += frame
            envelope[at : at + N_FFT] += square
    half = N_FFT // 2
    out = out[half : total - half] / envelope[half : total - half]
    result = np.zeros(length)
    result[: min(length, len(out))] = out[:length]
    return result


# -- embed and detect -----------------------------------------------------------------------------------------------
def mark_at_rate(signal: np.ndarray, net: Network | None = None) -> np.ndarray:
    """The watermark to add to `signal` (32 kHz): the inverse STFT of the embedder's change to the low bins."""
    net = net or network()
    if not np.any(signal):
        return np.zeros(len(signal))
    sums, sub, spectrum = _analyse(signal)
    mask = _taking_part(sums)
    residual = _run(net.embedder, sub.astype(np.float32)) * mask[:, None]
    magnitude = np.abs(spectrum)
    phase = np.where(magnitude > 0, spectrum / np.where(magnitude > 0, magnitude, 1.0), 1.0)
    new_magnitude = _unscale(sub + residual.astype(np.float64))
    old_magnitude = _unscale(sub)
    return _inverse((new_magnitude - old_magnitude) * phase, len(signal))


def mark(audio: np.ndarray, rate: int, net: Network | None = None) -> np.ndarray:
    """The watermark for `audio` (float32 mono at `rate`): the signal to add to it, same length, same rate."""
    audio = np.asarray(audio, dtype=np.float32)
    if len(audio) == 0:
        return audio
    # A little silence after the end, so the last partial hop is marked too and the resampler's edge falls outside.
    tail = int(np.ceil(rate * N_FFT / RATE))
    padded = np.concatenate([audio, np.zeros(tail, dtype=np.float32)])
    signal = padded if rate == RATE else soxr.resample(padded, rate, RATE, quality="HQ")
    added = mark_at_rate(np.asarray(signal, dtype=np.float64), net).astype(np.float32)
    if rate != RATE:
        added = soxr.resample(added, RATE, rate, quality="HQ")
    return np.asarray(added[: len(audio)], dtype=np.float32)


def embed(audio: np.ndarray, rate: int, net: Network | None = None) -> np.ndarray:
    """`audio` (float32 mono at `rate`) with the watermark added; same length, same rate, no higher sample peak."""
    audio = np.asarray(audio, dtype=np.float32)
    if len(audio) == 0:
        return audio
    out = audio + mark(audio, rate, net)
    # The mark goes in after mastering: it must not take the peak past the one mastering left (its ceiling, or full
    # scale). The few samples where it would are held at that peak; turning the whole take down instead moved its
    # loudness off the target mastering had met (by up to 1.2 LU).
    peak = float(np.max(np.abs(audio)))
    np.clip(out, -peak, peak, out=out)
    return np.asarray(out, dtype=np.float32)


def _lerp(x: np.ndarray, size: int) -> np.ndarray:
    """Linear interpolation of (frames, channels) to `size` frames, first and last frames aligned."""
    count = len(x)
    if size == count:
        return x
    if count == 1 or size == 1:
        return np.repeat(x[:1], size, axis=0)
    pos = np.arange(size, dtype=np.float32) * np.float32((count - 1) / (size - 1))
    low = np.minimum(np.floor(pos).astype(np.int64), count - 1)
    high = np.minimum(low + 1, count - 1)
    weight = (pos - low.astype(np.float32))[:, None]
    return x[low] * (1 - weight) + x[high] * weight


def _nearest(mask: np.ndarray, size: int) -> np.ndarray:
    scale = np.float32(len(mask) / size)
    index = np.minimum(np.floor(np.arange(size, dtype=np.float32) * scale).astype(np.int64), len(mask) - 1)
    return mask[index]


def score_at_rate(signal: np.ndarray, net: Network | None = None) -> float:
    """The detector's score for `signal` at 32 kHz: near 1 when marked, near 0 when not; 0 for digital silence."""
    net = net or network()
    if not np.any(signal):
        return 0.0
    sums, sub, _spectrum = _analyse(signal)
    mask = _taking_part(sums)
    sub32 = sub.astype(np.float32)
    count = len(sub32)
    attentions, marks = [], []
    for layers, size in ((net.slow, int(count * 1.25)), (net.normal, count), (net.fast, int(count * 0.75))):
        out = _run(layers, _lerp(sub32, max(size, 1)))
        weights = _nearest(mask, len(out))
        total = weights.sum()
        if total == 0:
            return 0.0
        attentions.append(float(out[:, 0] @ weights / total))
        marks.append(float(out[:, 1] @ weights / total))
    attention = np.exp(np.array(attentions) - max(attentions))
    value = float((attention / attention.sum()) @ np.array(marks))
    return min(max(value, 0.0), 1.0)


def to_rate(audio: np.ndarray, rate: int) -> np.ndarray:
    """Audio at the detector's rate: polyphase resampling (what Perth's detector uses), then the length
    ceil(n * 32000 / rate)."""
    audio = np.asarray(audio, dtype=np.float64)
    if rate == RATE:
        return audio
    common = np.gcd(rate, RATE)
    out = resample_poly(audio, RATE // common, rate // common)
    length = int(np.ceil(len(audio) * RATE / rate))
    return np.pad(out, (0, max(0, length - len(out))))[:length]


def score(audio: np.ndarray, rate: int, net: Network | None = None) -> float:
    """The detector's score for mono `audio` at any rate."""
    if len(audio) == 0:
        return 0.0
    return score_at_rate(to_rate(audio, rate), net)


def detect(audio: np.ndarray, rate: int, net: Network | None = None) -> tuple[bool, float]:
    """(watermarked, score) for mono `audio` at `rate`."""
    value = score(audio, rate, net)
    return value > THRESHOLD, value
