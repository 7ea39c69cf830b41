"""A small procedural dataset in the exact TAU Urban Acoustic Scenes 2020 Mobile layout.

``ensure_toy_dataset()`` writes, once, a dataset that ``load_index("tau2020", root)``
and ``load_index("tau2021eval", root)`` both read: ``meta.csv``,
``evaluation_setup/fold1_{train,evaluate,test}.csv`` and ``audio/*.wav`` at
44.1 kHz, 24-bit. It is what ``sp4sc demo`` and the tests train on.

Each of the 10 scenes is a mixture of procedural textures, drawn per clip with
random levels, frequencies and rates:

- every clip has a background bed of coloured noise (random spectral slope)
  and some reverberation, shared by all scenes, so classes overlap;
- each scene adds its own cues (engine harmonics, wheel clacks, bird chirps,
  babble, chimes, car passes, ...), at a random signal-to-background ratio,
  and some cues are shared by two or three scenes (babble, clacks, rumble);
- devices are simple filters: ``a`` flat, ``b`` a high-passed and slightly
  low-passed phone, ``c`` a narrow-band recorder with a little saturation.

A small CNN learns it well above chance in a few minutes on a CPU, but not
perfectly. Generation is deterministic in ``seed`` and the size parameters.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from sp4sc.constants import SCENES
from sp4sc.cpu import cores
from sp4sc.errors import Sp4scError
from sp4sc.log import logger

SAMPLE_RATE = 44100
VERSION = 2  # bump when the generator changes: the cache folder name includes it
DEVICES = ("a", "b", "c")
CITIES = ("amsterdam", "berlin", "copenhagen", "dublin", "edinburgh", "florence")
DEFAULT_N_PER_CLASS_DEVICE = 12  # 10 scenes x 3 devices x 12 = 360 clips
DEFAULT_DURATION = 2.0
TRAIN_FRACTION = 0.7


def default_cache_root() -> Path:
    """``$SP4SC_CACHE`` or ``~/.cache/sp4sc``."""
    return Path(os.environ.get("SP4SC_CACHE") or Path.home() / ".cache" / "sp4sc").expanduser()


# ------------------------------------------------------------------ textures


def _white_spec(rng: np.random.Generator, n: int) -> np.ndarray:
    """Spectrum of white Gaussian noise, complex64 ``(n // 2 + 1,)``."""
    spec = np.empty(n // 2 + 1, dtype=np.complex64)
    spec.real = rng.standard_normal(n // 2 + 1, dtype=np.float32)
    spec.imag = rng.standard_normal(n // 2 + 1, dtype=np.float32)
    return spec


def _coloured(rng: np.random.Generator, n: int, slope: float) -> np.ndarray:
    """Noise with power ~ f**-slope (0 white, 1 pink, 2 brown), unit RMS."""
    from scipy import fft

    spec = _white_spec(rng, n)
    f = np.arange(n // 2 + 1, dtype=np.float32)
    f[0] = 1.0
    spec *= f ** np.float32(-slope / 2)
    spec[0] = 0.0
    return _rms(fft.irfft(spec, n))


def _band(rng: np.random.Generator, n: int, lo: float, hi: float) -> np.ndarray:
    """Band-limited white noise between ``lo`` and ``hi`` Hz, unit RMS."""
    from scipy import fft

    spec = _white_spec(rng, n)
    f = np.arange(n // 2 + 1) * (SAMPLE_RATE / n)
    spec[(f < lo) | (f > hi)] = 0.0
    return _rms(fft.irfft(spec, n))


def _rms(x: np.ndarray) -> np.ndarray:
    return x / (np.sqrt(np.mean(x**2)) + 1e-12)


def _t(n: int) -> np.ndarray:
    return np.arange(n) / SAMPLE_RATE


def _harmonics(rng, n, f0, n_harm, wobble=0.02, decay=0.7):
    """A hum with ``n_harm`` harmonics of a slowly wobbling fundamental."""
    t = _t(n)
    f = f0 * (1 + wobble * np.sin(2 * np.pi * rng.uniform(0.1, 0.5) * t + rng.uniform(0, 6.3)))
    phase = 2 * np.pi * np.cumsum(f) / SAMPLE_RATE
    x = sum(decay**k * np.sin((k + 1) * phase + rng.uniform(0, 6.3)) for k in range(n_harm))
    return _rms(x)


def _events(rng, n, rate, make_event, jitter=1.0):
    """Events at about ``rate`` per second (``jitter`` 0: periodic, 1: Poisson)."""
    x = np.zeros(n)
    period = 1.0 / rate
    pos = rng.uniform(0, period)
    while pos * SAMPLE_RATE < n:
        ev = make_event()
        i = int(pos * SAMPLE_RATE)
        m = min(len(ev), n - i)
        x[i : i + m] += ev[:m]
        pos += period * (1 - jitter) + jitter * rng.exponential(period)
    return x if not np.any(x) else _rms(x)


def _click(rng, lo=500.0, hi=6000.0, length=0.03):
    m = int(length * SAMPLE_RATE)
    env = np.exp(-np.arange(m) / (m / rng.uniform(4, 8)))
    return _band(rng, m, lo, hi) * env


def _chirp(rng):
    """A bird-like rising/falling FM whistle."""
    m = int(rng.uniform(0.05, 0.2) * SAMPLE_RATE)
    t = np.arange(m) / SAMPLE_RATE
    f0, f1 = rng.uniform(2500, 6000), rng.uniform(2500, 7000)
    f = f0 + (f1 - f0) * t / t[-1]
    env = np.sin(np.pi * t / t[-1]) ** 2
    return env * np.sin(2 * np.pi * np.cumsum(f) / SAMPLE_RATE)


def _chime(rng, base=None):
    """A decaying bell-like tone with inharmonic partials (tram bell, mall chime)."""
    m = int(rng.uniform(0.4, 0.9) * SAMPLE_RATE)
    t = np.arange(m) / SAMPLE_RATE
    f = base or rng.uniform(600, 1500)
    x = sum(a * np.sin(2 * np.pi * f * r * t) for a, r in ((1, 1), (0.5, 2.76), (0.3, 5.4)))
    return x * np.exp(-t * rng.uniform(4, 9))


def _swell(rng, n, centre=None, width=None):
    """A slow rise and fall of loudness (a passing vehicle)."""
    t = _t(n)
    c = rng.uniform(0, t[-1]) if centre is None else centre
    w = rng.uniform(0.3, 1.0) if width is None else width
    return np.exp(-((t - c) ** 2) / (2 * w**2))


def _babble(rng, n, voices=None):
    """Speech-like babble: band noise with 3-6 Hz syllabic amplitude modulation per voice."""
    t = _t(n)
    voices = voices or int(rng.integers(3, 8))
    # Two noise carriers shared by the voices (one FFT each keeps generation fast).
    carriers = [_band(rng, n, rng.uniform(200, 400), rng.uniform(2500, 4000)) for _ in range(2)]
    x = np.zeros(n)
    for v in range(voices):
        mod = np.clip(np.sin(2 * np.pi * rng.uniform(3, 6) * t + rng.uniform(0, 6.3)), 0, None) ** 2
        x += np.roll(carriers[v % 2], int(rng.integers(n))) * mod * rng.uniform(0.5, 1)
    return _rms(x)


def _reverb(rng, x, rt60):
    """Convolve with an exponentially decaying noise impulse response (``rt60`` seconds)."""
    from scipy import fft

    m = int(min(rt60, 0.8) * SAMPLE_RATE)
    ir = rng.standard_normal(m, dtype=np.float32) * np.exp(-6.9 * np.arange(m, dtype=np.float32) / (rt60 * SAMPLE_RATE))
    ir[0] = 3.0
    ir /= np.sqrt(np.sum(ir**2))
    size = fft.next_fast_len(len(x) + m, real=True)
    y = fft.irfft(fft.rfft(x.astype(np.float32), size) * fft.rfft(ir, size), size)
    return y[: len(x)]


def _scene_cues(scene: str, rng: np.random.Generator, n: int) -> tuple[np.ndarray, float]:
    """The scene's own cues (unit RMS) and the room's reverberation time."""
    u = rng.uniform
    t = _t(n)
    if scene == "airport":
        x = 0.6 * _babble(rng, n, int(rng.integers(2, 5))) + 0.5 * _band(rng, n, 80, 400)  # crowd + HVAC
        x += 0.8 * _events(rng, n, u(0.3, 0.8), lambda: _chime(rng, u(500, 800)))  # announcement chimes
        rt = u(0.8, 1.5)
    elif scene == "bus":
        x = _harmonics(rng, n, u(25, 45), 8, wobble=0.05) * (1 + 0.5 * np.sin(2 * np.pi * u(0.2, 0.6) * t))
        x += 0.4 * _coloured(rng, n, 2.0)  # engine rumble
        x += 0.3 * _babble(rng, n, 2)
        rt = u(0.1, 0.3)
    elif scene == "metro":
        x = 0.7 * _coloured(rng, n, 2.0) + 0.5 * _events(rng, n, u(1.5, 3.0), lambda: _click(rng, 200, 2000, 0.05), 0.1)
        squeal_f = u(1800, 3500) * (1 + 0.05 * np.sin(2 * np.pi * u(0.2, 1) * t))
        x += u(0.1, 0.6) * np.sin(2 * np.pi * np.cumsum(squeal_f) / SAMPLE_RATE)
        rt = u(0.2, 0.5)
    elif scene == "metro_station":
        x = 0.6 * _coloured(rng, n, 1.5) * _swell(rng, n, width=u(0.5, 2))  # arriving train
        x += 0.4 * _babble(rng, n, int(rng.integers(2, 5)))
        x += 0.5 * _events(rng, n, u(0.5, 1.5), lambda: np.sin(2 * np.pi * 2000 * np.arange(2000) / SAMPLE_RATE), 0.2)
        rt = u(1.5, 3.0)
    elif scene == "park":
        x = 0.8 * _events(rng, n, u(2, 8), lambda: _chirp(rng)) + 0.5 * _band(rng, n, 100, 1500) * (
            1 + 0.8 * np.sin(2 * np.pi * u(0.1, 0.4) * t)
        )  # birds + wind
        rt = u(0.05, 0.15)
    elif scene == "public_square":
        x = 0.6 * _babble(rng, n) + 0.4 * _events(rng, n, u(1.5, 2.5), lambda: _click(rng, 300, 3000), 0.3)  # steps
        x += 0.4 * _coloured(rng, n, 1.8) * _swell(rng, n)  # a distant car
        x += 0.3 * _events(rng, n, u(0.5, 2), lambda: _chirp(rng))
        rt = u(0.2, 0.6)
    elif scene == "shopping_mall":
        x = 0.6 * _babble(rng, n)
        root = u(200, 400)
        x += 0.6 * _rms(sum(np.sin(2 * np.pi * root * r * t) for r in (1, 1.26, 1.5, 2)))  # background music chord
        x *= 1 + 0.3 * np.sin(2 * np.pi * u(1, 2) * t)
        rt = u(1.0, 2.0)
    elif scene == "street_pedestrian":
        x = 0.7 * _babble(rng, n, int(rng.integers(1, 4))) + 0.6 * _events(rng, n, u(1.5, 2.5), lambda: _click(rng, 300, 3000), 0.2)
        x += 0.3 * _coloured(rng, n, 1.5) * _swell(rng, n)
        rt = u(0.1, 0.4)
    elif scene == "street_traffic":
        x = np.zeros(n)
        for _ in range(int(rng.integers(1, 4))):  # car passes with a tyre-noise band and engine hum
            s = _swell(rng, n, width=u(0.2, 0.6))
            x += s * (_band(rng, n, 300, 3000) + 0.6 * _harmonics(rng, n, u(40, 90), 5))
        x = _rms(x) + 0.6 * _coloured(rng, n, 1.8)
        rt = u(0.05, 0.2)
    elif scene == "tram":
        x = 0.6 * _coloured(rng, n, 2.2) + 0.5 * _events(rng, n, u(0.8, 1.5), lambda: _click(rng, 100, 1000, 0.08), 0.1)
        x += 0.5 * _harmonics(rng, n, u(300, 500), 3, wobble=0.01)  # electric motor whine
        x += 0.6 * _events(rng, n, u(0.2, 0.6), lambda: _chime(rng, u(1000, 1400)))
        rt = u(0.1, 0.3)
    else:  # pragma: no cover - SCENES is fixed
        raise ValueError(scene)
    return _rms(x), rt


def _device(x: np.ndarray, device: str, rng: np.random.Generator) -> np.ndarray:
    from scipy.signal import butter, sosfilt

    if device == "a":
        return x
    if device == "b":  # phone: high-pass 250 Hz, gentle low-pass 9 kHz
        sos = np.concatenate([butter(2, 250, "highpass", fs=SAMPLE_RATE, output="sos"),
                              butter(1, 9000, "lowpass", fs=SAMPLE_RATE, output="sos")])
        return sosfilt(sos, x)
    if device == "c":  # narrow-band recorder: band-pass, mild saturation, anti-alias low-pass
        y = sosfilt(butter(3, [400, 5000], "bandpass", fs=SAMPLE_RATE, output="sos"), x)
        g = 1.5 / (np.max(np.abs(y)) + 1e-9)
        return sosfilt(butter(4, 7000, "lowpass", fs=SAMPLE_RATE, output="sos"), np.tanh(g * y) / g)
    raise ValueError(device)  # pragma: no cover


def synth_clip(scene: str, device: str, n_samples: int, rng: np.random.Generator) -> np.ndarray:
    """One clip: background bed + scene cues at a random ratio, reverberated, through the device filter."""
    bed = _coloured(rng, n_samples, rng.uniform(0.3, 2.2))
    bed += rng.uniform(0, 0.6) * _band(rng, n_samples, 50, rng.uniform(300, 3000))
    cues, rt60 = _scene_cues(scene, rng, n_samples)
    ratio_db = rng.uniform(-8, 8)  # some clips have the cues buried in the background
    x = _rms(bed) + 10 ** (ratio_db / 20) * cues
    x = _reverb(rng, x, rt60 * rng.uniform(0.7, 1.3))
    x = _device(x, device, rng)
    x = _rms(x) * 10 ** (rng.uniform(-32, -18) / 20)  # level -32..-18 dBFS RMS
    return np.clip(x, -0.999, 0.999).astype(np.float32)


# ------------------------------------------------------------------ dataset


def toy_name(n_per_class_device: int, duration: float, seed: int) -> str:
    """Folder name of a toy dataset in the cache: changes with every parameter and the generator version."""
    return f"toy-v{VERSION}-n{n_per_class_device}-d{duration:g}-s{seed}"


def _synth_file(job: tuple[str, str, str, int, int, int, int, int]) -> None:
    """Generate and write one clip (in a worker process or inline)."""
    import soundfile as sf

    path, scene, device, seed, si, di, k, n_samples = job
    x = synth_clip(scene, device, n_samples, np.random.default_rng([seed, si, di, k]))
    sf.write(path, x, SAMPLE_RATE, subtype="PCM_24", format="WAV")


def _write(root: Path, n_per_class_device: int, duration: float, seed: int) -> None:
    n_samples = int(round(duration * SAMPLE_RATE))
    (root / "audio").mkdir(parents=True)
    (root / "evaluation_setup").mkdir()
    n_train = min(n_per_class_device - 1, max(1, int(round(TRAIN_FRACTION * n_per_class_device))))
    meta, train, evaluate, jobs = [], [], [], []
    for si, scene in enumerate(SCENES):
        for di, device in enumerate(DEVICES):
            for k in range(n_per_class_device):
                # Train and evaluate clips come from different "cities", as in TAU's fold1.
                city = CITIES[(k % 4) if k < n_train else 4 + (k % 2)]
                location = 100 * si + k
                name = f"audio/{scene}-{city}-{location}-{di * 1000 + k}-{device}.wav"
                jobs.append((str(root / name), scene, device, seed, si, di, k, n_samples))
                meta.append(f"{name}\t{scene}\t{city}-{location}\t{device}")
                (train if k < n_train else evaluate).append((name, scene))
    # Each clip has its own seeded generator: the files do not depend on the worker count.
    n_cores = cores()
    if n_cores > 1 and len(jobs) * duration > 20 and "fork" in mp.get_all_start_methods():
        with ProcessPoolExecutor(n_cores, mp_context=mp.get_context("fork")) as pool:
            list(pool.map(_synth_file, jobs, chunksize=8))
    else:
        for job in jobs:
            _synth_file(job)
    (root / "meta.csv").write_text("filename\tscene_label\tidentifier\tsource_label\n" + "\n".join(meta) + "\n")
    setup = root / "evaluation_setup"
    (setup / "fold1_train.csv").write_text("filename\tscene_label\n" + "".join(f"{n}\t{s}\n" for n, s in train))
    (setup / "fold1_evaluate.csv").write_text("filename\tscene_label\n" + "".join(f"{n}\t{s}\n" for n, s in evaluate))
    (setup / "fold1_test.csv").write_text("filename\n" + "".join(f"{n}\n" for n, _ in evaluate))
    params = {"generator_version": VERSION, "n_per_class_device": n_per_class_device, "duration": duration,
              "seed": seed, "sample_rate": SAMPLE_RATE, "n_clips": len(meta)}
    (root / "toy.json").write_text(json.dumps(params, indent=2) + "\n")


def ensure_toy_dataset(
    root: str | os.PathLike | None = None,
    *,
    n_per_class_device: int = DEFAULT_N_PER_CLASS_DEVICE,
    duration: float = DEFAULT_DURATION,
    seed: int = 0,
) -> Path:
    """Path of the toy dataset, generating it on first use.

    The folder is built under a temporary name and renamed into place when
    complete, so a killed run leaves no half dataset and concurrent callers
    agree on one copy.

    Args:
        root: the dataset folder; by default ``<cache>/<toy_name(...)>`` with
            the cache at ``$SP4SC_CACHE`` or ``~/.cache/sp4sc``.
        n_per_class_device: clips per scene and device (30 x this in all);
            about 70 % go to fold1_train, the rest to fold1_evaluate (= test).
            The default (12: 360 clips, about 4 s to generate) is the demo's;
            tests use 2 with ``duration=1.0`` (60 clips, well under a second).
        duration: clip length in seconds.
        seed: random seed.

    Returns:
        The dataset root.
    """
    if n_per_class_device < 2:
        raise Sp4scError(f"n_per_class_device={n_per_class_device}: must be at least 2 (one train and one evaluate clip)")
    if not 0 < duration <= 60:
        raise Sp4scError(f"duration={duration}: must be in (0, 60] seconds")
    root = Path(root).expanduser() if root is not None else default_cache_root() / toy_name(n_per_class_device, duration, seed)
    stamp = root / "toy.json"
    want = {"generator_version": VERSION, "n_per_class_device": n_per_class_device, "duration": duration, "seed": seed}
    if root.exists():
        try:
            have = json.loads(stamp.read_text())
        except (OSError, ValueError):
            raise Sp4scError(f"{root}: exists but is not a toy dataset (no readable toy.json); choose another folder") from None
        if any(have.get(k) != v for k, v in want.items()):
            raise Sp4scError(f"{root}: holds a toy dataset with other parameters ({have}); choose another folder")
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".tmp", dir=root.parent))
    try:
        logger.info("generating the toy dataset (%d clips of %g s) in %s", 30 * n_per_class_device, duration, root)
        shutil.rmtree(tmp)
        _write(tmp, n_per_class_device, duration, seed)
        try:
            os.rename(tmp, root)
        except OSError:
            if not stamp.exists():  # not a concurrent builder's complete copy
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root
