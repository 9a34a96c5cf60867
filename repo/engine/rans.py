"""Static-model rANS for byte symbols, vectorised with numpy over interleaved lanes (both sides; a stream of
fewer than ``VECTOR_FROM_LANES`` lanes runs symbol by symbol in Python instead, which is faster there).

zstd's Huffman literals cost a whole number of bits per symbol and at least one; the residuals of a dense
float16/bfloat16 fine-tune (a few ulps per weight) carry 0.7–4 bits per element, where that rounding loses
10–50 %. rANS codes each symbol in ``-log2(p)`` bits of a static table, so a tensor costs its order-0 entropy
plus the table and the lanes' final states.

Encode (create side)::

    symbols (uint8) → counts → frequencies scaled to 2^PRECISION (every present symbol ≥ 1)
      → symbol i goes to lane i % lanes; lanes advance together, one step per row, last row first
      → each step a lane whose state would overflow emits its low 16 bits (at most one word per step)
      → final states (uint32 per lane) and the words, in the order the decoder reads them

Decode (apply side): the same steps forwards, first row first; every lane's state stays in
``[2^16, 2^32)`` whatever the input, each step reads at most one word per lane, the stream must be used up
exactly and every lane must end at the initial state — so a hostile payload yields wrong symbols (caught
by the segment's checks) or a :class:`~repo.errors.PatchError`, never unbounded work or memory.

How many lanes (:func:`lanes_for`) trades the lanes' final states (4 bytes each) against decoding speed (one
numpy step per row): few for small streams, more for large and for long ones.
"""

from __future__ import annotations

import numpy as np

from lorien.repo.errors import PatchError

PRECISION = 15  # frequencies sum to 2^15; the decoder's slot table has that many entries
SYMBOLS = 256
LOW = 1 << 16  # states live in [LOW, 2^32): one 16-bit word in or out per step at most
ELEMENTS_PER_LANE = 4096  # more lanes: fewer (slow, Python-level) steps, but 4 bytes of final state each
MAX_LANES = 1024
STATE_SHARE = 500  # the lanes' final states cost at most ~1/500 of the coded symbols
# From this many coded bytes (≥ ~1.5 MB of float16 weights) the decoder's speed is what a device waits for:
# up to four times the lanes, their states up to 1/100 of the stream (an 8 MiB float16 dense piece: 3525
# lanes, ~0.5 % more bytes than the small-stream rule, decoding ~2x faster)
LARGE_STREAM = 512 * 1024
LARGE_ELEMENTS_PER_LANE, LARGE_MAX_LANES, LARGE_STATE_SHARE = 1024, 4096, 100
# A numpy row costs the decoder ~7-10 µs whatever its width, so a long stream gets enough lanes to decode in at
# most LONG_MAX_ROWS rows however well it compresses (a re-quantized int8 tensor of 2 MB codes to ~40 KB: 21
# lanes by the share rule, 50 K rows; with 256 lanes its states cost 1 KB more and it decodes ~12x faster).
# Shorter streams with few lanes decode symbol by symbol (~0.2 µs each) instead of row by row.
LONG_STREAM, LONG_MAX_ROWS = 128 * 1024, 4096
VECTOR_FROM_LANES = 32


def lanes_for(freqs: np.ndarray, count: int) -> int:
    """Lanes for ``count`` symbols under ``freqs``: as many as speed wants, as few as a small stream needs
    (a 100 K-symbol bfloat16 update codes to ~10 KB, where 24 lanes' states would add 1 %)."""
    p = freqs[freqs > 0].astype(np.float64) / (1 << PRECISION)
    coded_bytes = count * float(-(p * np.log2(p)).sum()) / 8
    if coded_bytes >= LARGE_STREAM:
        lanes = min(LARGE_MAX_LANES, count // LARGE_ELEMENTS_PER_LANE, int(coded_bytes / LARGE_STATE_SHARE / 4))
    else:
        lanes = min(MAX_LANES, count // ELEMENTS_PER_LANE, int(coded_bytes / STATE_SHARE / 4))
    if count >= LONG_STREAM:
        lanes = max(lanes, -(-count // LONG_MAX_ROWS))
    return max(1, lanes)


def frequencies(symbols: np.ndarray) -> np.ndarray:
    """Counts scaled to sum to 2^PRECISION, every symbol that occurs keeping at least 1."""
    counts = np.bincount(symbols, minlength=SYMBOLS).astype(np.int64)
    scaled = np.where(counts > 0, np.maximum(1, counts * (1 << PRECISION) // max(1, int(counts.sum()))), 0)
    scaled[int(np.argmax(counts))] += (1 << PRECISION) - int(scaled.sum())
    return scaled.astype(np.uint16)  # the likeliest symbol keeps ≥ 1: at most 255 others round up by < 1 each


def encode(symbols: np.ndarray, freqs: np.ndarray, lanes: int) -> tuple[np.ndarray, np.ndarray]:
    """Final lane states (uint32) and the emitted 16-bit words of ``symbols`` under ``freqs``."""
    freq = freqs.astype(np.uint64)
    start = np.concatenate(([0], np.cumsum(freq)[:-1])).astype(np.uint64)
    limit = freq << np.uint64(32 - PRECISION)  # a state from here up emits its low 16 bits first
    rows = -(-len(symbols) // lanes)
    grid = np.full(rows * lanes, int(np.argmax(freqs)), dtype=np.uint8)  # padding: the likeliest symbol
    grid[: len(symbols)] = symbols
    grid = grid.reshape(rows, lanes)
    if lanes < VECTOR_FROM_LANES:
        return _encode_scalar(grid, freq.tolist(), start.tolist(), limit.tolist())
    state = np.full(lanes, LOW, dtype=np.uint64)
    emitted: list[np.ndarray] = [np.empty(0, np.uint16)] * rows
    sixteen, precision = np.uint64(16), np.uint64(PRECISION)
    for row in range(rows - 1, -1, -1):
        symbol = grid[row]
        full = np.flatnonzero(state >= limit[symbol])
        emitted[row] = state[full].astype(np.uint16)  # the low 16 bits
        state[full] >>= sixteen
        quotient, remainder = np.divmod(state, freq[symbol])
        state = (quotient << precision) + remainder + start[symbol]
    return state.astype(np.uint32), np.concatenate([np.empty(0, np.uint16), *emitted])


def _encode_scalar(
    grid: np.ndarray, freq: list[int], start: list[int], limit: list[int]
) -> tuple[np.ndarray, np.ndarray]:
    """The same steps symbol by symbol with Python integers, for streams of few lanes (same output)."""
    lanes = grid.shape[1]
    states = [LOW] * lanes
    emitted: list[list[int]] = []
    for row in reversed(grid.tolist()):
        words = []
        for lane, symbol in enumerate(row):
            x = states[lane]
            if x >= limit[symbol]:
                words.append(x & 0xFFFF)
                x >>= 16
            quotient, remainder = divmod(x, freq[symbol])
            states[lane] = (quotient << PRECISION) + remainder + start[symbol]
        emitted.append(words)
    flat = [word for words in reversed(emitted) for word in words]
    return np.array(states, dtype=np.uint32), np.array(flat, dtype=np.uint16)


def decode(states: np.ndarray, words: np.ndarray, freqs: np.ndarray, count: int) -> np.ndarray:
    """``count`` symbols (uint8) from lane states and words; PatchError when they do not fit together.

    Per row of lanes: one gather each for the symbol, its frequency and its offset inside the symbol's slots
    (tables indexed by slot), state arithmetic in uint32 (``freq * (state >> 15) + bias < 2^32`` for every
    state in range), refills where a state fell under ``LOW``. A stream of few lanes decodes symbol by symbol
    in Python instead: a numpy row costs ~10 µs whatever its width, a Python symbol well under 1 µs."""
    lanes = len(states)
    if freqs.shape != (SYMBOLS,) or int(freqs.astype(np.int64).sum()) != 1 << PRECISION or lanes == 0:
        raise PatchError("rANS frequency table does not sum to its precision")
    if count and lanes > count:
        raise PatchError(f"rANS stream has {lanes} lanes for {count} symbols")
    if int(states.min()) < LOW:
        raise PatchError("rANS lane state out of range")
    counts = freqs.astype(np.int64)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    slot_symbol = np.repeat(np.arange(SYMBOLS, dtype=np.uint8), counts)
    slot_freq = np.repeat(counts, counts).astype(np.uint32)
    slot_bias = (np.arange(1 << PRECISION) - np.repeat(starts, counts)).astype(np.uint32)
    rows = -(-count // lanes)
    output = np.empty((rows, lanes), dtype=np.uint8)
    decoder = _decode_scalar if lanes < VECTOR_FROM_LANES else _decode_rows
    final, used = decoder(states.astype(np.uint32), words, (slot_symbol, slot_freq, slot_bias), rows, output)
    if used != len(words) or np.any(final != LOW):
        raise PatchError("rANS stream does not end where its symbols do")
    return output.reshape(-1)[:count]


Tables = tuple[np.ndarray, np.ndarray, np.ndarray]  # per slot: symbol, its frequency, slot - its start


def _decode_rows(
    state: np.ndarray, words: np.ndarray, tables: Tables, rows: int, output: np.ndarray
) -> tuple[np.ndarray, int]:
    """Vectorised over the lanes, one numpy step per row; the final states and the words used."""
    slot_symbol, slot_freq, slot_bias = tables
    refill = words.astype(np.uint32)
    mask, shift, low, sixteen = (
        np.uint32((1 << PRECISION) - 1),
        np.uint32(PRECISION),
        np.uint32(LOW),
        np.uint32(16),
    )
    lanes = len(state)
    slot, freq, bias = (np.empty(lanes, dtype=np.uint32) for _ in range(3))
    below = np.empty(lanes, dtype=bool)
    # ndarray methods and ufuncs with out=: numpy's Python-level wrappers (np.take, np.flatnonzero) cost as
    # much as the work itself on a row of a few thousand lanes
    take_symbol, take_freq, take_bias = slot_symbol.take, slot_freq.take, slot_bias.take
    bitwise_and, right_shift, multiply, add, less = np.bitwise_and, np.right_shift, np.multiply, np.add, np.less
    position, available = 0, len(refill)
    for row in range(rows):
        bitwise_and(state, mask, out=slot)
        take_symbol(slot, out=output[row])
        take_freq(slot, out=freq)
        take_bias(slot, out=bias)
        right_shift(state, shift, out=state)
        multiply(state, freq, out=state)
        add(state, bias, out=state)
        short = less(state, low, out=below).nonzero()[0]
        needed = len(short)
        if needed:
            if position + needed > available:
                raise PatchError("rANS stream ends early")
            state[short] = (state[short] << sixteen) | refill[position : position + needed]
            position += needed
    return state, position


def _decode_scalar(
    state: np.ndarray, words: np.ndarray, tables: Tables, rows: int, output: np.ndarray
) -> tuple[np.ndarray, int]:
    """The same steps symbol by symbol with Python integers, for streams of few lanes."""
    symbol_of, freq_of, bias_of = (table.tolist() for table in tables)
    refill, states, lanes = words.tolist(), state.tolist(), len(state)
    out = bytearray(rows * lanes)
    mask, position, index = (1 << PRECISION) - 1, 0, 0
    for _ in range(rows):
        for lane in range(lanes):
            x = states[lane]
            slot = x & mask
            out[index] = symbol_of[slot]
            index += 1
            x = freq_of[slot] * (x >> PRECISION) + bias_of[slot]
            if x < LOW:
                if position == len(refill):
                    raise PatchError("rANS stream ends early")
                x = (x << 16) | refill[position]
                position += 1
            states[lane] = x
    output.reshape(-1)[:] = np.frombuffer(out, np.uint8)
    return np.array(states, dtype=np.uint32), position
