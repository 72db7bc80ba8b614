"""Speaker similarity: resemblyzer's GE2E voice encoder, run in numpy (no torch at run time).

The weights are the ones the `resemblyzer` wheel ships (`resemblyzer/pretrained.pt`, 17 MB); the package is
located without importing it (its `__init__` imports torch). The file is torch's legacy serialisation: a few
small pickles, the state-dict pickle whose tensors point at storages by persistent id, a pickle listing the
storage keys, then each storage as an int64 element count followed by its raw little-endian data. A restricted
unpickler maps torch's tensor-rebuild function and storage classes to numpy; any other global is refused.

The pipeline follows resemblyzer's `preprocess_wav` + `VoiceEncoder.embed_utterance`:
- resample to 16 kHz with soxr (HQ, what librosa's default resampler calls) and raise the level to -30 dBFS
  (never lower it);
- shorten long pauses. resemblyzer flags 30 ms windows as speech with webrtcvad; here a window is speech when its
  RMS is within 40 dB of the loudest window and above -60 dBFS, then resemblyzer's smoothing (moving average of
  8, rounded) and dilation (7 windows) decide what is kept. On clips without long pauses both keep everything;
- 40-band mel power spectrogram: 25 ms Hann frames (n_fft 400), 10 ms hop, centred with zero padding, and a
  Slaney-style mel filterbank (librosa's default: Slaney mel scale, area-normalised triangles, 0-8 kHz);
- partial utterances of 160 frames, one every round(16000 / 1.3 / 160) = 77 frames; the last is dropped when it
  covers less than 75% of its window (unless it is the only one);
- each partial through a 3-layer LSTM (hidden 256), the last layer's final hidden state -> linear 256 -> ReLU ->
  L2 norm; the utterance embedding is the L2-normalised mean of the partial embeddings.
"""

from __future__ import annotations

import importlib.util
import pickle
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

RATE = 16_000
N_FFT = 400
HOP = 160
N_MELS = 40
PARTIAL_FRAMES = 160
PARTIAL_RATE = 1.3
MIN_COVERAGE = 0.75
TARGET_DBFS = -30.0
EMBEDDING_SIZE = 256
_VAD_WINDOW = 480  # 30 ms
_VAD_SMOOTHING = 8
_VAD_DILATION = 7
_VAD_FLOOR_DB = -50.0
_VAD_SILENCE_DBFS = -60.0
_DTYPES = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "LongStorage": np.int64, "IntStorage": np.int32}


def weights_path() -> Path:
    spec = importlib.util.find_spec("resemblyzer")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("speaker similarity needs the resemblyzer weights: install resemblyzer==0.1.4 (--no-deps)")
    return Path(next(iter(spec.submodule_search_locations))) / "pretrained.pt"


# -- torch legacy checkpoint -> numpy ---------------------------------------------------------------------------
class _Storage:
    def __init__(self, dtype: type[np.generic]) -> None:
        self.dtype = np.dtype(dtype)
        self.data: np.ndarray | None = None


class _Tensor:
    def __init__(self, storage: _Storage, offset: int, size: tuple[int, ...], stride: tuple[int, ...]) -> None:
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def array(self) -> np.ndarray:
        data = self.storage.data
        assert data is not None, "tensor storage was never read"
        item = data.itemsize
        view = np.lib.stride_tricks.as_strided(
            data[self.offset :], shape=self.size, strides=tuple(s * item for s in self.stride)
        )
        return np.array(view)


def _rebuild_tensor(storage: _Storage, offset: int, size: tuple[int, ...], stride: tuple[int, ...], *_: Any) -> Any:
    return _Tensor(storage, offset, tuple(size), tuple(stride))


class _StorageType:
    def __init__(self, name: str) -> None:
        self.dtype = _DTYPES[name]


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: Any, storages: dict[str, _Storage]) -> None:
        super().__init__(file)
        self.storages = storages

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch" and name in _DTYPES:
            return _StorageType(name)
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        raise pickle.UnpicklingError(f"unexpected global {module}.{name} in the voice encoder weights")

    def persistent_load(self, pid: Any) -> Any:
        kind, storage_type, key, _location, _size, *view = pid
        if kind != "storage" or (view and view[0] is not None):
            raise pickle.UnpicklingError(f"unsupported storage reference {pid!r}")
        if key not in self.storages:
            self.storages[key] = _Storage(storage_type.dtype)
        return self.storages[key]


def load_state_dict(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a legacy-format torch checkpoint's `model_state`, as numpy arrays."""
    storages: dict[str, _Storage] = {}
    with path.open("rb") as handle:
        for _ in range(3):  # magic number, protocol version, system info
            pickle.load(handle)  # noqa: S301 - plain ints and a dict of sizes
        checkpoint = _Unpickler(handle, storages).load()
        keys = _Unpickler(handle, storages).load()
        for key in keys:
            storage = storages[key]
            count = int(np.frombuffer(handle.read(8), dtype="<i8")[0])
            raw = handle.read(count * storage.dtype.itemsize)
            storage.data = np.frombuffer(raw, dtype=storage.dtype.newbyteorder("<")).astype(storage.dtype)
    return {name: tensor.array() for name, tensor in checkpoint["model_state"].items()}


# -- audio preprocessing ----------------------------------------------------------------------------------------
def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above (librosa's default, htk=False)."""
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / (200.0 / 3)
    log_part = 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(hz >= 1000.0, log_part, linear)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    return np.where(mel >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel - 15.0)), mel * (200.0 / 3))


def mel_filterbank(sample_rate: int = RATE, n_fft: int = N_FFT, n_mels: int = N_MELS) -> np.ndarray:
    """Triangular filters (n_mels, n_fft // 2 + 1), equally spaced in Slaney mel from 0 to Nyquist, area-normalised."""
    bins = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(np.array(0.0)), _hz_to_mel(np.array(sample_rate / 2)), n_mels + 2))
    widths = np.diff(edges)
    ramps = edges[:, None] - bins[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return weights.astype(np.float32)


def mel_spectrogram(wav: np.ndarray, filterbank: np.ndarray) -> np.ndarray:
    """Mel power frames (n_frames, n_mels): centred 25 ms Hann frames (zero padded), 10 ms hop."""
    padded = np.pad(wav.astype(np.float32), N_FFT // 2)
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP]
    window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)).astype(np.float32)  # periodic Hann
    power = np.abs(np.fft.rfft(frames * window, axis=1)) ** 2
    return np.asarray(power.astype(np.float32) @ filterbank.T, dtype=np.float32)


def _shorten_pauses(wav: np.ndarray) -> np.ndarray:
    wav = wav[: len(wav) - len(wav) % _VAD_WINDOW]
    if wav.size == 0:
        return wav
    rms = np.sqrt(np.mean(wav.reshape(-1, _VAD_WINDOW).astype(np.float64) ** 2, axis=1))
    level = 20 * np.log10(np.maximum(rms, 1e-10))
    flags = (level > level.max() + _VAD_FLOOR_DB) & (level > _VAD_SILENCE_DBFS)
    width = _VAD_SMOOTHING
    padded = np.concatenate([np.zeros((width - 1) // 2), flags.astype(float), np.zeros(width // 2)])
    smoothed = np.convolve(padded, np.ones(width) / width, mode="valid")
    mask = np.round(smoothed).astype(bool)
    half = _VAD_DILATION // 2
    mask = np.convolve(np.pad(mask, half).astype(int), np.ones(_VAD_DILATION, dtype=int), mode="valid") > 0
    return wav[np.repeat(mask, _VAD_WINDOW)]


def preprocess(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """16 kHz float32, level raised to -30 dBFS when quieter, long pauses shortened."""
    wav = np.asarray(audio, dtype=np.float32).reshape(-1)
    if sample_rate != RATE:
        import soxr

        wav = np.asarray(soxr.resample(wav, sample_rate, RATE, quality="HQ"), dtype=np.float32)
    rms = float(np.sqrt(np.mean(wav.astype(np.float64) ** 2))) if wav.size else 0.0
    if rms > 0:
        change = TARGET_DBFS - 20 * np.log10(rms)
        if change > 0:
            wav = wav * np.float32(10 ** (change / 20))
    return _shorten_pauses(wav)


def partial_slices(n_samples: int) -> list[slice]:
    """Mel-frame ranges of the partial utterances, as resemblyzer's embed_utterance cuts them."""
    n_frames = int(np.ceil((n_samples + 1) / HOP))
    step = int(np.round(RATE / PARTIAL_RATE / HOP))
    starts = range(0, max(1, n_frames - PARTIAL_FRAMES + step + 1), step)
    slices = [slice(i, i + PARTIAL_FRAMES) for i in starts]
    last = slices[-1]
    coverage = (n_samples - last.start * HOP) / (PARTIAL_FRAMES * HOP)
    if coverage < MIN_COVERAGE and len(slices) > 1:
        slices = slices[:-1]
    return slices


# -- the encoder ------------------------------------------------------------------------------------------------
def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * x)))


class SpeakerEncoder:
    """GE2E speaker embeddings compatible with resemblyzer; `load()` once, then thread-safe `embed`."""

    def __init__(self, path: Path | None = None) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._layers: list[tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None
        self._linear: tuple[np.ndarray, np.ndarray] | None = None
        self._filterbank = mel_filterbank()

    def load(self) -> None:
        if self._layers is not None:
            return
        with self._lock:
            if self._layers is not None:
                return
            state = load_state_dict(self._path or weights_path())
            self._linear = (state["linear.weight"].T.copy(), state["linear.bias"])
            self._layers = [
                (state[f"lstm.weight_ih_l{i}"].T.copy(), state[f"lstm.weight_hh_l{i}"].T.copy(),
                 state[f"lstm.bias_ih_l{i}"] + state[f"lstm.bias_hh_l{i}"])
                for i in range(3)
            ]  # fmt: skip

    def forward(self, mels: np.ndarray) -> np.ndarray:
        """Embeddings (batch, 256) of mel batches (batch, frames, 40)."""
        self.load()
        # 480 small matmuls: BLAS threads only add overhead (6x slower on a busy 2-core machine)
        with _blas_controller().limit(limits=1, user_api="blas"):
            return self._forward(np.asarray(mels, dtype=np.float32))

    def _forward(self, x: np.ndarray) -> np.ndarray:
        assert self._layers is not None and self._linear is not None
        batch, steps, _ = x.shape
        hidden = np.zeros((batch, EMBEDDING_SIZE), dtype=np.float32)
        for w_ih, w_hh, bias in self._layers:
            inputs = x @ w_ih + bias  # (batch, steps, 4 * hidden): gates i, f, g, o
            hidden = np.zeros((batch, w_hh.shape[0]), dtype=np.float32)
            cell = np.zeros_like(hidden)
            outputs = np.empty((batch, steps, w_hh.shape[0]), dtype=np.float32)
            for t in range(steps):
                gates = inputs[:, t] + hidden @ w_hh
                i, f, g, o = np.split(gates, 4, axis=1)
                cell = _sigmoid(f) * cell + _sigmoid(i) * np.tanh(g)
                hidden = _sigmoid(o) * np.tanh(cell)
                outputs[:, t] = hidden
            x = outputs
        weight, bias = self._linear
        raw = np.maximum(hidden @ weight + bias, 0.0)
        return np.asarray(raw / np.maximum(np.linalg.norm(raw, axis=1, keepdims=True), 1e-12), dtype=np.float32)

    def embed_preprocessed(self, wav: np.ndarray) -> np.ndarray:
        """Utterance embedding of a clip already through `preprocess` (16 kHz)."""
        slices = partial_slices(len(wav))
        end = slices[-1].stop * HOP
        if end >= len(wav):
            wav = np.pad(wav, (0, end - len(wav)))
        mel = mel_spectrogram(wav, self._filterbank)
        partials = self.forward(np.stack([mel[s] for s in slices]))
        mean = partials.mean(axis=0)
        return np.asarray(mean / max(float(np.linalg.norm(mean)), 1e-12), dtype=np.float32)

    def embed(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        """The 256-d unit-norm speaker embedding of a mono clip; ValueError when the clip holds no sound."""
        wav = preprocess(audio, sample_rate)
        if wav.size < HOP:
            raise ValueError("the clip is too short or silent to embed a speaker")
        return self.embed_preprocessed(wav)

    @staticmethod
    def similarity(a_emb: np.ndarray, b_emb: np.ndarray) -> float:
        a, b = np.asarray(a_emb, dtype=np.float64), np.asarray(b_emb, dtype=np.float64)
        return float(a @ b / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-12))


_controller: Any = None


def _blas_controller() -> Any:
    global _controller
    if _controller is None:
        from threadpoolctl import ThreadpoolController

        _controller = ThreadpoolController()
    return _controller


_shared: SpeakerEncoder | None = None
_shared_lock = threading.Lock()


def shared_encoder() -> SpeakerEncoder:
    """One encoder per process (the weights are read once)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = SpeakerEncoder()
        return _shared
