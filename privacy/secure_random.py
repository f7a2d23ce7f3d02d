"""A cryptographically secure source of uniform and Gaussian tensors for DP noise and Poisson sampling.

Why: DP-SGD's guarantee assumes nobody can predict the noise or the batches. ``torch.Generator`` is a
Mersenne Twister: about 624 observed outputs give away its whole state, and from it every past and future
draw, so a seed taken from OS entropy only helps until something leaks an output. This module draws its
bits from AES-256 in counter mode (the ``cryptography`` package, OpenSSL, AES-NI where the CPU has it),
keyed from ``os.urandom(32)``: without the key its output cannot be told from random, and one output says
nothing about any other.

How: each request encrypts zeros in one AES call per 4 MiB (CTR mode's ciphertext of zeros is the
keystream itself) straight into a numpy buffer, views it as uint64 words and turns the words into floats
with exact dyadic arithmetic, all vectorised: per-element Python work would cost more than the training step.

* uniform on [0, 1): the top ``p`` bits of a word times 2**-p, where ``p`` is the dtype's precision
  (53 for float64, 24 for float32), so every value is exactly representable and 1.0 never appears;
* standard Gaussian: Box-Muller on u1 in (0, 1] (``(k + 1) * 2**-53``, so ``log(u1)`` is finite) and
  u2 in [0, 1), both outputs of every pair used, computed in float64 and only then cast to the requested
  dtype. The largest magnitude it can return is sqrt(-2 ln 2**-53) ~ 8.57: the tail it leaves out has
  probability ~1e-17 per draw.

What it does not do: it does not defend against floating-point attacks on the Gaussian sampler (Mironov
2012; Jin et al. 2022), which read the noise off the low-order bits of a noised float whatever the bits'
source. See docs/noise.md.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Sequence

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

KEY_BYTES = 32  # AES-256
_TWO_PI = 2.0 * math.pi
_WORD_BITS = 64
_BLOCK = 16  # AES block size in bytes
_CHUNK = 1 << 22  # bytes of keystream per AES call; larger requests take several calls into one buffer
_ZEROS = memoryview(bytes(_CHUNK))  # the plaintext: CTR mode's ciphertext of zeros is the keystream

Shape = int | Sequence[int] | torch.Size


def _numel(shape: Shape) -> tuple[tuple[int, ...], int]:
    dims = (int(shape),) if isinstance(shape, int) else tuple(int(d) for d in shape)
    if any(d < 0 for d in dims):
        raise ValueError(f"negative dimension in shape {dims}")
    return dims, math.prod(dims)


class SecureRandom:
    """AES-256-CTR keystream turned into uniform and Gaussian tensors; one instance per training round.

    The key and the initial counter block come from ``os.urandom``. ``key`` may be given only to check
    the construction against known vectors in tests: a key anyone else knows makes the noise predictable.
    After a ``fork`` the child rekeys itself on its first request, so parent and child never share a stream.
    """

    def __init__(self, key: bytes | None = None, nonce: bytes | None = None) -> None:
        self._lock = threading.Lock()
        self._fixed = key is not None
        self._rekey(key, nonce)

    def _rekey(self, key: bytes | None = None, nonce: bytes | None = None) -> None:
        key = os.urandom(KEY_BYTES) if key is None else bytes(key)
        nonce = os.urandom(16) if nonce is None else bytes(nonce)
        if len(key) != KEY_BYTES or len(nonce) != 16:
            raise ValueError("SecureRandom needs a 32-byte AES-256 key and a 16-byte initial counter block")
        self._encryptor = Cipher(algorithms.AES(key), modes.CTR(nonce)).encryptor()
        self._pid = os.getpid()

    # ---- raw bits -------------------------------------------------------------------------------------
    def _keystream(self, n: int) -> np.ndarray:
        """``n`` keystream bytes (AES-256-CTR encryption of zeros) in a fresh, writable, aligned array."""
        if n < 0:
            raise ValueError("n must be >= 0")
        out = np.empty(n + _BLOCK - 1, dtype=np.uint8)  # update_into wants block - 1 bytes of slack
        with self._lock:
            if os.getpid() != self._pid and not self._fixed:
                self._rekey()  # a forked child must not replay its parent's stream
            view = memoryview(out)
            for start in range(0, n, _CHUNK):
                size = min(_CHUNK, n - start)
                self._encryptor.update_into(_ZEROS[:size], view[start:start + size + _BLOCK - 1])
        return out[:n]

    def random_bytes(self, n: int) -> bytes:
        """``n`` bytes of the keystream."""
        return self._keystream(n).tobytes()

    def _words53(self, count: int) -> np.ndarray:
        """``count`` independent integers uniform on [0, 2**53), as int64 (cheaper to convert to float)."""
        words = self._keystream(8 * count).view(np.uint64)
        np.right_shift(words, np.uint64(_WORD_BITS - 53), out=words)
        return words.view(np.int64)

    # ---- float64 numpy kernels ------------------------------------------------------------------------
    def _uniform_float64(self, count: int, bits: int = 53) -> np.ndarray:
        """Uniform on [0, 1) with ``bits`` random bits: exact multiples of 2**-bits, 1.0 excluded."""
        k = self._words53(count)
        if bits < 53:
            np.right_shift(k, 53 - bits, out=k)  # non-negative, so the arithmetic shift is exact
        out = k.astype(np.float64)  # exact: k < 2**53
        out *= 2.0 ** -bits
        return out

    def _normal_float64(self, count: int, std: float = 1.0) -> np.ndarray:
        """N(0, std**2) draws by Box-Muller; both outputs of each pair are used."""
        pairs = (count + 1) // 2
        f = self._words53(2 * pairs).astype(np.float64)
        radius, angle = f[:pairs], f[pairs:]
        # u1 = (k + 1) 2**-53 in (0, 1], so log(u1) is finite; radius = std * sqrt(-2 log u1)
        radius += 1.0
        radius *= 2.0 ** -53
        np.log(radius, out=radius)
        radius *= -2.0 * float(std) ** 2
        np.sqrt(radius, out=radius)
        angle *= _TWO_PI * 2.0 ** -53  # 2 pi u2, u2 in [0, 1)
        out = np.empty(2 * pairs, dtype=np.float64)
        t_angle, t_out = torch.from_numpy(angle), torch.from_numpy(out)
        torch.cos(t_angle, out=t_out[:pairs])  # torch's vectorised cos/sin are ~2x numpy's here
        torch.sin(t_angle, out=t_out[pairs:])
        out[:pairs] *= radius
        out[pairs:] *= radius
        return out[:count]

    # ---- tensors ------------------------------------------------------------------------------------------
    def uniform(self, shape: Shape, dtype: torch.dtype = torch.float64,
                device: torch.device | str | None = None) -> torch.Tensor:
        """Uniform tensor on [0, 1) built with the dtype's full precision (53 bits float64, 24 float32)."""
        if not dtype.is_floating_point:
            raise TypeError(f"uniform needs a floating dtype, not {dtype}")
        dims, count = _numel(shape)
        bits = min(53, round(-math.log2(torch.finfo(dtype).eps)) + 1)  # exact in dtype: no rounding up to 1.0
        out = torch.from_numpy(self._uniform_float64(count, bits)).reshape(dims).to(dtype)
        return out if device is None else out.to(device)

    def normal(self, shape: Shape, std: float = 1.0, dtype: torch.dtype = torch.float32,
               device: torch.device | str | None = None) -> torch.Tensor:
        """Tensor of N(0, std**2) draws: Box-Muller in float64, scaled by ``std``, then cast and moved."""
        if not dtype.is_floating_point:
            raise TypeError(f"normal needs a floating dtype, not {dtype}")
        dims, count = _numel(shape)
        if not math.isfinite(std) or std < 0:
            raise ValueError(f"std must be finite and >= 0, not {std}")
        z = self._normal_float64(count, std)
        out = torch.from_numpy(z).reshape(dims).to(dtype)
        return out if device is None else out.to(device)
