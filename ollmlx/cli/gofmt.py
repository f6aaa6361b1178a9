"""Go's text for durations and float32s, so the CLI prints what `ollama` prints.

`ollama run --verbose` prints time.Duration values with `%v` (api/types.go Summary):
"60.921ms", "1m2.5s". `ollama run EMBEDDING_MODEL` prints the vector as encoding/json
writes a []float32: the shortest decimal that reads back as the same float32.
"""

from __future__ import annotations

import struct
from decimal import Decimal


def _fraction(value: int, digits: int) -> str:
    """Go's fmtFrac: ".123" for value/10**digits, trailing zeros (and the point) dropped."""
    if not digits or not value:
        return ""
    return "." + str(value).rjust(digits, "0").rstrip("0")


def go_duration(ns: int) -> str:
    """time.Duration.String(): "0s", "850ns", "12.5µs", "60.921ms", "3.2s", "1h2m3s"."""
    sign, u = ("-", -ns) if ns < 0 else ("", ns)
    if u == 0:
        return "0s"
    if u < 1_000_000_000:
        unit, digits = ("ns", 0) if u < 1_000 else ("µs", 3) if u < 1_000_000 else ("ms", 6)
        whole, part = divmod(u, 10**digits)
        return f"{sign}{whole}{_fraction(part, digits)}{unit}"
    seconds, part = divmod(u, 1_000_000_000)
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    text = f"{seconds}{_fraction(part, 9)}s"
    if minutes or hours:
        text = f"{minutes}m{text}"
    if hours:
        text = f"{hours}h{text}"
    return sign + text


def _float32(value: float) -> float:
    return float(struct.unpack("<f", struct.pack("<f", value))[0])


def go_float32(value: float) -> str:
    """encoding/json's text for a float32: the shortest round-tripping digits, in 'f'
    notation, or 'e' below 1e-6 and from 1e21 (with "e-07" written "e-7")."""
    f32 = _float32(value)
    if f32 == 0:
        return "-0" if str(f32).startswith("-") else "0"
    shortest = next(
        text
        for text in (f"{f32:.{digits}g}" for digits in range(1, 10))
        if _float32(float(text)) == f32
    )
    number = Decimal(shortest)
    # Go compares in float32: float32(abs) < 1e-6 with the constant a float32 too.
    if _float32(1e-6) <= abs(f32) < _float32(1e21):
        return format(number, "f")
    sign, digits, exponent = number.as_tuple()
    assert isinstance(exponent, int)
    mantissa = "".join(map(str, digits))
    power = exponent + len(mantissa) - 1
    mantissa = mantissa[0] + ("." + mantissa[1:] if len(mantissa) > 1 else "")
    text = f"{'-' if sign else ''}{mantissa}e{'-' if power < 0 else '+'}{abs(power):02d}"
    if text[-4:-1] == "e-0":  # Go's clean-up of e-09 to e-9
        text = text[:-2] + text[-1]
    return text


def go_float32_list(values: list[float]) -> str:
    """json.Marshal of a []float32: "[0.1,-0.25,1e-7]" (no spaces)."""
    return "[" + ",".join(go_float32(v) for v in values) + "]"
