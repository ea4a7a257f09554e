"""SM2 digital signatures with SM3 (GB/T 32918.2-2016, GM/T 0003), fast enough for a payment
channel: at least 1,000 signatures a second on one core in plain Python.

Neither ``cryptography`` nor the pure-Python ``gmssl`` package is usable here (the first has no
SM2, the second signs about 100 a second). Speed comes from fixed-base combs: for each key's
base point (G for signing, the channel's public key too for verifying) every multiple
``j * 256**i * point`` is computed once, so a scalar multiplication is at most 32 mixed additions
in Jacobian coordinates (a secret's 47, below) and one inversion, with no doublings. The curve is a parameter so the
published test-curve example (GM/T 0003 annex) checks the same code as the recommended curve.
The additions run on GMP's integers (``gmpy2``): a third of the time of Python's at 256 bits
(``paysw bench sm2``).

A multiplication by a secret (the nonce of a signature, the private key) must not let its time
tell anything of the secret: signatures made faster because their nonces had a zero top byte are
what lattice attacks recover keys from, given a few thousand timed signatures (Minerva; TPM-Fail
did it over a network). So a secret scalar is blinded first (``k + r * n``, ``r`` fresh and random,
of some 128 bits, so that the sum has 48 digits and its top one is never zero: the same point,
other digits every time) and summed in a fixed number of additions (a zero digit adds into a sum
thrown away), and the final inversion is blinded too. The blind is longer than the 96 ones in a
row of SM2's n (its bits 128 to 223), through which a shorter blind's multiple of n would carry
the nonce's own bits into the digits unchanged. What remains is below what Python can promise:
GMP's arithmetic is not constant-time, and the table rows read follow the blinded digits, which a
process sharing the CPU's caches could in principle watch. A key that must withstand that lives
in a hardware HSM.

SM3 itself comes from ``cryptography`` (OpenSSL).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from functools import cached_property

from cryptography.hazmat.primitives import hashes
from gmpy2 import mpz

DEFAULT_ID = b"1234567812345678"  # the user id of GM/T 0009 when the parties agree none
_WINDOW_BITS = 8
_WINDOW = 1 << _WINDOW_BITS
_BLIND_BITS = 128  # about the size of the random multiplier of n added to a secret scalar

Point = tuple[int, int]  # affine; None stands for the point at infinity


def sm3(data: bytes) -> bytes:
    digest = hashes.Hash(hashes.SM3())
    digest.update(data)
    return digest.finalize()


@dataclass(frozen=True)
class Curve:
    p: int
    a: int
    b: int
    n: int
    gx: int
    gy: int
    _combs: dict[Point, list[list[Point]]] = field(default_factory=dict, compare=False, repr=False)

    @property
    def g(self) -> Point:
        return (self.gx, self.gy)

    def on_curve(self, point: Point) -> bool:
        x, y = point
        return 0 <= x < self.p and 0 <= y < self.p and (y * y - x * x * x - self.a * x - self.b) % self.p == 0

    # -- point arithmetic ----------------------------------------------------------------------

    def _add_affine(self, p1: Point | None, p2: Point | None) -> Point | None:
        if p1 is None:
            return p2
        if p2 is None:
            return p1
        (x1, y1), (x2, y2), p = p1, p2, self.p
        if x1 == x2:
            if (y1 + y2) % p == 0:
                return None
            slope = (3 * x1 * x1 + self.a) * pow(2 * y1, -1, p) % p
        else:
            slope = (y2 - y1) * pow(x2 - x1, -1, p) % p
        x3 = (slope * slope - x1 - x2) % p
        return x3, (slope * (x1 - x3) - y1) % p

    def _rows(self, bits: int) -> int:
        return (bits + _WINDOW_BITS - 1) // _WINDOW_BITS

    def comb(self, base: Point, rows: int = 0) -> list[list[Point]]:
        """``table[i][j - 1] = j * 256**i * base``, at least ``rows`` rows (enough for a scalar
        below n by default): built once per base point (some 8,000 points), and extended once
        for a blinded secret's longer scalars (G's: 12,000)."""
        rows = max(rows, self._rows(self.n.bit_length()))
        table = self._combs.get(base, [])
        if len(table) >= rows:
            return table
        table = list(table)  # extended apart and put in place whole: no reader sees it half built
        # On GMP's integers from the start: the build is some 8,000 modular inversions, and
        # GMP's take a tenth of the time of Python's (0.5 s a base point on a slow machine).
        window_base: Point | None = (mpz(base[0]), mpz(base[1]))
        if table:
            window_base = self._add_affine(table[-1][-1], table[-1][0])  # 256 * the last row's base
        while len(table) < rows:
            row: list[Point] = []
            acc: Point | None = None
            for _ in range(_WINDOW - 1):
                acc = self._add_affine(acc, window_base)
                assert acc is not None  # the order n is prime and larger than 255
                row.append(acc)
            table.append(row)
            window_base = self._add_affine(row[-1], window_base)  # 256 * window_base
        self._combs[base] = table
        return table

    @cached_property
    def _blind(self) -> tuple[int, int, int]:
        """(rows, lowest, count): ``k + r * n`` with ``r = lowest + randbelow(count)`` has exactly
        ``rows`` digits, the top one never zero, for every k in [1, n)."""
        rows = self._rows(self.n.bit_length() + _BLIND_BITS)
        lowest = -(-(1 << _WINDOW_BITS * (rows - 1)) // self.n)  # k + r * n >= 256**(rows - 1)
        highest = ((1 << _WINDOW_BITS * rows) - self.n) // self.n  # k + r * n < 256**rows
        return rows, lowest, highest - lowest + 1

    def multiply(self, scalar: int, base: Point) -> Point | None:
        """``scalar * base`` with the base point's comb (Jacobian accumulator, one inversion), in a
        time that depends on the scalar: for public scalars only."""
        return self._to_affine(self._comb_sum(scalar % self.n, self.comb(base), None))

    def multiply_secret(self, scalar: int, base: Point) -> Point:
        """``scalar * base`` for a secret ``scalar`` in [1, n): blinded, in a fixed number of
        additions whatever the scalar, with a blinded inversion (the module's docstring)."""
        if not 0 < scalar < self.n:
            raise ValueError("secret scalar out of range")
        rows, lowest, count = self._blind
        blinded = scalar + (lowest + secrets.randbelow(count)) * self.n
        table = self.comb(base, rows)
        top = rows - 1
        x, y = table[top][(blinded >> top * _WINDOW_BITS) - 1]  # the top digit: never zero
        acc: tuple[int, int, int] | None = (x, y, mpz(1))
        p = mpz(self.p)
        for row in table[:top]:
            digit = blinded & (_WINDOW - 1)
            blinded >>= _WINDOW_BITS
            added = self._add_mixed(acc, row[digit - 1], p)  # a zero digit: the row's last, thrown away
            acc = (acc, added)[digit != 0]
        point = self._to_affine(acc, blind=True)
        assert point is not None  # scalar in [1, n): never the point at infinity
        return point

    def multiply_add(self, s: int, base1: Point, t: int, base2: Point) -> Point | None:
        """``s * base1 + t * base2`` (verification's sum) with both combs and one inversion."""
        acc = self._comb_sum(s % self.n, self.comb(base1), None)
        return self._to_affine(self._comb_sum(t % self.n, self.comb(base2), acc))

    def _comb_sum(self, scalar: int, table: list[list[Point]], acc: tuple[int, int, int] | None):
        p = mpz(self.p)  # (the table's points are mpz already: every product below is GMP's)
        for row in table:
            digit = scalar & (_WINDOW - 1)
            scalar >>= _WINDOW_BITS
            if digit:
                acc = self._add_mixed(acc, row[digit - 1], p)
        return acc

    def _add_mixed(self, acc: tuple[int, int, int] | None, point: Point, p: int) -> tuple[int, int, int] | None:
        """``acc + point``, the sum in Jacobian coordinates and the point affine."""
        if acc is None:
            return (point[0], point[1], 1)
        x1, y1, z1 = acc
        x2, y2 = point
        z1z1 = z1 * z1 % p
        h = (x2 * z1z1 - x1) % p
        r = (y2 * z1 * z1z1 - y1) % p
        if h == 0:  # equal x: the same point (double it) or opposite points
            return self._double(acc) if r == 0 else None
        hh = h * h % p
        hhh = h * hh % p
        v = x1 * hh
        x3 = (r * r - hhh - 2 * v) % p
        return x3, (r * (v - x3) - y1 * hhh) % p, z1 * h % p

    def _double(self, jacobian: tuple[int, int, int]) -> tuple[int, int, int]:
        x, y, z = jacobian
        p = self.p
        yy = y * y % p
        s = 4 * x * yy % p
        zz = z * z % p
        m = (3 * x * x + self.a * zz * zz) % p
        x3 = (m * m - 2 * s) % p
        return x3, (m * (s - x3) - 8 * yy * yy) % p, 2 * y * z % p

    def _to_affine(self, jacobian: tuple[int, int, int] | None, blind: bool = False) -> Point | None:
        """Affine coordinates; with ``blind``, z is inverted times a random factor (an inversion's
        time follows its input, and a secret multiple's z is the secret's)."""
        if jacobian is None:
            return None
        x, y, z = jacobian
        p = mpz(self.p)
        if blind:
            factor = secrets.randbelow(self.p - 1) + 1
            z_inv = pow(z * factor % p, -1, p) * factor % p
        else:
            z_inv = pow(z, -1, p)
        z2 = z_inv * z_inv % p
        return int(x * z2 % p), int(y * z2 * z_inv % p)  # plain ints out of the curve


# The recommended curve, sm2p256v1 (GB/T 32918.5-2017).
SM2P256 = Curve(
    p=0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFF,
    a=0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFC,
    b=0x28E9FA9E9D9F5E344D5A9E4BCF6509A7F39789F515AB8F92DDBCBD414D940E93,
    n=0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFF7203DF6B21C6052B53BBF40939D54123,
    gx=0x32C4AE2C1F1981195F9904466A39C9948FE30BBFF2660BE1715A4589334C74C7,
    gy=0xBC3736A2F4F6779C59BDCEE36B692153D0A9877CC62A474002DF32E52139F0A0,
)


def _int32(value: int) -> bytes:
    return value.to_bytes(32, "big")


def z_value(public: Point, user_id: bytes = DEFAULT_ID, curve: Curve = SM2P256) -> bytes:
    """Z = SM3(ENTL || ID || a || b || xG || yG || xA || yA): binds the signer's id and key."""
    entl = (len(user_id) * 8).to_bytes(2, "big")
    parts = (curve.a, curve.b, curve.gx, curve.gy, *public)
    return sm3(entl + user_id + b"".join(_int32(v) for v in parts))


class SigningKey:
    """An SM2 private key bound to its signer id. Signs ``data`` as r || s (64 bytes)."""

    def __init__(self, secret: int, user_id: bytes = DEFAULT_ID, curve: Curve = SM2P256) -> None:
        if not 1 <= secret < curve.n - 1:
            raise ValueError("SM2 private key out of range")
        self._d = secret
        self._curve = curve
        self.public = public = curve.multiply_secret(secret, curve.g)
        self._z = z_value(public, user_id, curve)
        blind = secrets.randbelow(curve.n - 1) + 1  # (an inversion's time follows its input)
        self._inv_1_plus_d = pow((1 + secret) * blind % curve.n, -1, curve.n) * blind % curve.n

    @classmethod
    def generate(cls, user_id: bytes = DEFAULT_ID, curve: Curve = SM2P256) -> SigningKey:
        return cls(secrets.randbelow(curve.n - 2) + 1, user_id, curve)

    def public_key_hex(self) -> str:
        """04 || x || y in hex, as ``VerifyingKey.from_bytes`` reads it."""
        return (b"\x04" + _int32(self.public[0]) + _int32(self.public[1])).hex().upper()

    def digest(self, data: bytes) -> int:
        return int.from_bytes(sm3(self._z + data), "big")

    def sign(self, data: bytes, k: int | None = None) -> bytes:
        """``k`` is for known-answer tests only; in use it is fresh from the system's CSPRNG."""
        curve, n = self._curve, self._curve.n
        e = self.digest(data)
        while True:
            nonce = k if k is not None else secrets.randbelow(n - 1) + 1
            point = curve.multiply_secret(nonce, curve.g)
            r = (e + point[0]) % n
            if r == 0 or r + nonce == n:
                k = None
                continue
            s = self._inv_1_plus_d * (nonce - r * self._d) % n
            if s:
                return _int32(r) + _int32(s)
            k = None


class VerifyingKey:
    def __init__(self, public: Point, user_id: bytes = DEFAULT_ID, curve: Curve = SM2P256) -> None:
        if not curve.on_curve(public):
            raise ValueError("SM2 public key is not on the curve")
        self.public = public
        self._curve = curve
        self._z = z_value(public, user_id, curve)
        curve.comb(public)  # built now, at start, rather than by the first verification

    @classmethod
    def from_bytes(cls, encoded: bytes, user_id: bytes = DEFAULT_ID) -> VerifyingKey:
        """From the uncompressed form 04 || x || y."""
        if len(encoded) != 65 or encoded[0] != 4:
            raise ValueError("SM2 public key must be 04 || x || y (65 bytes)")
        return cls((int.from_bytes(encoded[1:33], "big"), int.from_bytes(encoded[33:], "big")), user_id)

    def to_bytes(self) -> bytes:
        return b"\x04" + _int32(self.public[0]) + _int32(self.public[1])

    def verify(self, data: bytes, signature: bytes) -> bool:
        curve, n = self._curve, self._curve.n
        if len(signature) != 64:
            return False
        r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
        if not (1 <= r < n and 1 <= s < n):
            return False
        t = (r + s) % n
        if t == 0:
            return False
        e = int.from_bytes(sm3(self._z + data), "big")
        point = curve.multiply_add(s, curve.g, t, self.public)
        return point is not None and (e + point[0]) % n == r
