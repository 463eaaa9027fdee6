"""Lossless entropy coding of one tensor, for compressed archives (Deep Compression's last stage).

    blob, meta = encode_tensor(t)                        # meta: small and JSON-safe
    t2 = decode_tensor(blob, meta, max_numel=10**8)      # same dtype, shape and bit pattern

The coder works on the raw bit patterns of the elements (an unsigned integer of the element's width), so the
round trip is bit-exact for every dtype, NaN payloads included, with one deliberate exception: a floating
-0.0 is stored as +0.0 (they compare equal). Pruning by ``w * mask`` turns every negative pruned weight into
-0.0; keeping that sign bit would make half of the zeros nonzero bit patterns and defeat sparse coding.
Several encodings are sized and the smallest is written; ``meta["method"]`` names it:

* ``raw``      the little-endian bytes, unchanged;
* ``const``    every element has one bit pattern;
* ``symbols``  few distinct bit patterns (int8 weights, codebook indices, weight-shared floats): a table of
  the distinct patterns plus the Huffman-coded index of each element;
* ``planes``   byte planes (byte j of every element), each Huffman-coded or stored raw: dense floats, whose
  sign/exponent byte is very predictable;
* ``sparse``   Deep Compression's relative indexing: the gap (zeros skipped) before each nonzero, capped at
  2^g - 1 with a zero "filler" entry when a gap is longer (the paper's padding trick), Huffman-coded, and the
  entries' values coded by one of the methods above.

Huffman codes are canonical and limited to 15 bits, so decoding is a 32768-entry table lookup. A code stream
is cut into chunks whose start bit offsets are stored; the decoder walks all chunks at once, one numpy
operation per symbol position of a chunk, which decodes MiniLM-sized tensors (tens of millions of symbols)
in about a second without any compiled extension. (``constriction``'s rANS coder was considered: it is not
on the GPU image, where archives must load too.)

Decoding treats blob and meta as hostile: every count is checked against the shape, ``max_numel`` and the
bytes actually present before anything is allocated, code tables must satisfy Kraft's inequality, every
chunk must end exactly where the next begins, and any inconsistency raises :class:`ArchiveError` (never a
numpy or torch exception). Work and memory are bounded by the blob size and ``max_numel``.
"""

from __future__ import annotations

import heapq
import math

import numpy as np
import torch

from ..errors import ArchiveError

VERSION = 1
MAX_CODE_BITS = 15  # longest Huffman code: the decode table has 2**15 entries
MAX_SYMBOLS = 4096  # largest table of distinct bit patterns the "symbols" method uses
_METHODS = ("raw", "const", "symbols", "planes", "sparse")
_RAW, _CONST, _SYMBOLS, _PLANES, _SPARSE = range(5)
_STREAM_HUFFMAN, _STREAM_CONST, _STREAM_RAW8 = range(3)
_GAP_BITS = (1, 2, 3, 4, 5, 6, 7, 8, 10, 12)  # filler caps tried for sparse gaps (2**g - 1 zeros at most)
_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
_INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_DTYPES = {str(d).removeprefix("torch."): d for d in (
    torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int8, torch.uint8, torch.int16,
    torch.int32, torch.int64, torch.bool, torch.complex64, torch.float8_e4m3fn, torch.float8_e5m2)}
_ENCODE_PIECE = 1 << 22  # symbols bit-packed per numpy pass: bounds the encoder's temporary memory


# ------------------------------------------------------------------------------------------- public API


def encode_tensor(t: torch.Tensor) -> tuple[bytes, dict]:
    """Losslessly encode ``t`` (any device, layout-contiguous or not) with the smallest method available."""
    if not isinstance(t, torch.Tensor):
        raise ArchiveError(f"encode_tensor expects a torch.Tensor, got {type(t).__name__}")
    name = str(t.dtype).removeprefix("torch.")
    if name not in _DTYPES:
        raise ArchiveError(f"encode_tensor: dtype {name} is not supported; convert the tensor to one of "
                           f"{', '.join(_DTYPES)} first")
    bits = _to_bits(t)
    method, body = _encode_best(bits, allow_sparse=True)
    meta = {"v": VERSION, "dtype": name, "shape": list(t.shape), "method": _METHODS[method]}
    return bytes([method]) + _varint(bits.size) + body, meta  # the element count cross-checks meta's shape


def decode_tensor(blob: bytes, meta: dict, *, max_numel: int) -> torch.Tensor:
    """Inverse of :func:`encode_tensor`. Raises ArchiveError on anything malformed or over ``max_numel``."""
    dtype, shape, numel = _check_meta(meta, max_numel)
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise ArchiveError(f"entropy blob must be bytes, got {type(blob).__name__}")
    reader = _Reader(bytes(blob))
    method = reader.u8()
    if method >= len(_METHODS) or _METHODS[method] != meta["method"]:
        raise ArchiveError(f"entropy blob: method byte {method} does not match meta method {meta['method']!r}")
    if reader.varint() != numel:
        raise ArchiveError(f"entropy blob: element count does not match meta shape {list(shape)}")
    width = dtype.itemsize
    bits = _decode_body(reader, method, numel, width, allow_sparse=True)
    if reader.remaining():
        raise ArchiveError(f"entropy blob: {reader.remaining()} unexpected trailing bytes")
    if dtype == torch.bool and bits.size and bits.max() > 1:
        raise ArchiveError("entropy blob: a bool tensor holds a byte other than 0 or 1")
    view = torch.from_numpy(bits.view(_np_int(width)).copy())
    return view.view(dtype).reshape(shape)


# ------------------------------------------------------------------------------------- bit patterns


def _np_int(width: int):
    return {1: np.uint8, 2: np.int16, 4: np.int32, 8: np.int64}[width]


def _to_bits(t: torch.Tensor) -> np.ndarray:
    t = t.detach().to("cpu").contiguous().reshape(-1)
    width = t.element_size()
    bits = t.view(_INT_VIEW[width]).numpy().view(_UINT[width]).copy()
    if t.is_floating_point():
        bits[bits == _UINT[width](1 << (8 * width - 1))] = 0  # -0.0 -> +0.0 (see the module docstring)
    return bits


def _check_meta(meta, max_numel: int) -> tuple[torch.dtype, tuple[int, ...], int]:
    if not isinstance(meta, dict):
        raise ArchiveError(f"entropy meta must be a dict, got {type(meta).__name__}")
    if meta.get("v") != VERSION:
        raise ArchiveError(f"entropy meta version {meta.get('v')!r} is not supported (this build reads {VERSION}); "
                           "upgrade slimgraph")
    dtype = _DTYPES.get(meta.get("dtype")) if isinstance(meta.get("dtype"), str) else None
    if dtype is None:
        raise ArchiveError(f"entropy meta: unknown dtype {meta.get('dtype')!r}")
    shape = meta.get("shape")
    if not isinstance(shape, list) or len(shape) > 16 or not all(
            type(s) is int and 0 <= s for s in shape):
        raise ArchiveError(f"entropy meta: shape must be a list of at most 16 non-negative ints, got {shape!r}")
    if meta.get("method") not in _METHODS:
        raise ArchiveError(f"entropy meta: unknown method {meta.get('method')!r}")
    numel = math.prod(shape)
    if numel > max_numel:
        raise ArchiveError(f"entropy meta: tensor of {numel} elements exceeds the limit of {max_numel}")
    return dtype, tuple(shape), numel


# ------------------------------------------------------------------------------------- method choice


def _encode_best(bits: np.ndarray, *, allow_sparse: bool) -> tuple[int, bytes]:
    """Size every applicable method from symbol counts (cheap), then encode only the smallest."""
    n, width = bits.size, bits.dtype.itemsize
    if n == 0:
        return _RAW, b""
    candidates: dict[int, int] = {_RAW: n * width}
    first = bits[0]
    if not (bits != first).any():
        return _CONST, _le_bytes(bits[:1])
    table = _small_table(bits)
    if table is not None:
        values, counts = table
        candidates[_SYMBOLS] = values.size * width + _stream_size(counts)
    planes = [np.bincount(_plane(bits, j), minlength=256) for j in range(width)] if width > 1 else \
        [np.bincount(bits, minlength=256)]
    candidates[_PLANES] = sum(min(_stream_size(c), n + 1) for c in planes)
    sparse_plan = None
    if allow_sparse:
        nonzero = np.flatnonzero(bits)
        if nonzero.size < 0.7 * n:
            sparse_plan = _best_gap_bits(nonzero, bits)
            candidates[_SPARSE] = sparse_plan[1]
    method = min(candidates, key=lambda m: (candidates[m], m))
    if method == _SYMBOLS:
        body = _encode_symbols(bits, table[0])
    elif method == _PLANES:
        body = b"".join(_encode_stream(_plane(bits, j) if width > 1 else bits, 256) for j in range(width))
    elif method == _SPARSE:
        body = _encode_sparse(bits, sparse_plan[0])
    if method == _RAW or len(body) >= n * width:  # the estimate erred: raw is never beaten by a larger body
        return _RAW, _le_bytes(bits)
    return method, body


def _le_bytes(bits: np.ndarray) -> bytes:
    return bits.astype(bits.dtype.newbyteorder("<"), copy=False).tobytes()


def _plane(bits: np.ndarray, j: int) -> np.ndarray:
    return ((bits >> np.array(8 * j, dtype=bits.dtype)) & np.array(0xFF, dtype=bits.dtype)).astype(np.uint8)


def _small_table(bits: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(distinct bit patterns, their counts) when there are at most MAX_SYMBOLS of them, else None."""
    if bits.dtype.itemsize == 1:
        counts = np.bincount(bits, minlength=256)
        values = np.flatnonzero(counts).astype(np.uint8)
        return values, counts[values]
    # a sample rejects dense floats without sorting the whole tensor
    if np.unique(bits[: 4 * MAX_SYMBOLS]).size > MAX_SYMBOLS:
        return None
    values, counts = np.unique(bits, return_counts=True)
    return (values, counts) if values.size <= MAX_SYMBOLS else None


def _encode_symbols(bits: np.ndarray, values: np.ndarray) -> bytes:
    if bits.dtype.itemsize == 1:  # a 256-entry lookup is much cheaper than a binary search per element
        lookup = np.zeros(256, dtype=np.int32)
        lookup[values] = np.arange(values.size, dtype=np.int32)
        index = lookup[bits]
    else:
        index = np.searchsorted(values, bits)
    return _varint(values.size) + _le_bytes(values) + _encode_stream(index, values.size)


# --------------------------------------------------------------------------- sparse (relative indices)


def _entries(nonzero: np.ndarray, gap_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Gaps (< 2**gap_bits) of every entry and, per entry, the index of its nonzero (-1 for a filler)."""
    cap = (1 << gap_bits) - 1
    gaps = np.diff(nonzero, prepend=-1) - 1
    fillers = gaps // (cap + 1)  # each filler is a zero entry that skips `cap` zeros and itself
    rest = gaps - fillers * (cap + 1)
    per = fillers + 1
    total = int(per.sum())
    last = np.cumsum(per) - 1
    entry_gaps = np.full(total, cap, dtype=np.int64)
    entry_gaps[last] = rest
    source = np.full(total, -1, dtype=np.int64)
    source[last] = np.arange(nonzero.size)
    return entry_gaps, source


def _best_gap_bits(nonzero: np.ndarray, bits: np.ndarray) -> tuple[int, int]:
    """(gap bits, estimated bytes) of the cheapest filler cap for this tensor's sparse positions.

    Sized from the gap histogram alone: a gap d costs d >> g fillers (gap symbol 2**g - 1, value 0) and one
    entry with gap symbol d & (2**g - 1).
    """
    width = bits.dtype.itemsize
    values = bits[nonzero]
    gaps = np.diff(nonzero, prepend=-1) - 1
    table = _small_table(values) if values.size else None
    best = None
    for g in _GAP_BITS:
        cap = (1 << g) - 1
        fillers = int((gaps >> g).sum())
        gap_counts = np.bincount(gaps & cap, minlength=cap + 1)
        gap_counts[cap] += fillers
        entries = values.size + fillers
        value_bytes = entries * width
        if table is not None:
            counts = np.append(table[1], fillers) if fillers else table[1]
            value_bytes = min(value_bytes, (table[0].size + 1) * width + _stream_size(counts))
        size = 4 + _stream_size(gap_counts) + value_bytes
        if best is None or size < best[1]:
            best = (g, size)
    return best
def _encode_sparse(bits: np.ndarray, gap_bits: int) -> bytes:
    nonzero = np.flatnonzero(bits)
    gaps, source = _entries(nonzero, gap_bits)
    values = np.zeros(gaps.size, dtype=bits.dtype)
    real = source >= 0
    values[real] = bits[nonzero[source[real]]]
    method, body = _encode_best(values, allow_sparse=False)
    return (_varint(gap_bits) + _varint(gaps.size) + _encode_stream(gaps, 1 << gap_bits)
            + bytes([method]) + body)


def _decode_sparse(reader: _Reader, numel: int, width: int) -> np.ndarray:
    gap_bits = reader.varint()
    if gap_bits not in _GAP_BITS:
        raise ArchiveError(f"entropy blob: sparse gap width {gap_bits} is not one this format writes")
    count = reader.varint()
    if count > numel:
        raise ArchiveError(f"entropy blob: {count} sparse entries for a tensor of {numel} elements")
    gaps = _decode_stream(reader, count, 1 << gap_bits)
    method = reader.u8()
    if method not in (_RAW, _CONST, _SYMBOLS, _PLANES):
        raise ArchiveError(f"entropy blob: sparse values use method byte {method}, which is not allowed there")
    values = _decode_body(reader, method, count, width, allow_sparse=False)
    positions = np.cumsum(gaps.astype(np.int64) + 1) - 1
    if count and positions[-1] >= numel:
        raise ArchiveError(f"entropy blob: sparse position {int(positions[-1])} is past the tensor's {numel} "
                           "elements")
    out = np.zeros(numel, dtype=_UINT[width])
    out[positions] = values
    return out


# ------------------------------------------------------------------------------------------ bodies


def _decode_body(reader: _Reader, method: int, numel: int, width: int, *, allow_sparse: bool) -> np.ndarray:
    dtype = np.dtype(_UINT[width]).newbyteorder("<")
    if method == _RAW:
        return np.frombuffer(reader.take(numel * width), dtype=dtype).astype(_UINT[width])
    if method == _CONST:
        if numel == 0:
            raise ArchiveError("entropy blob: constant method for an empty tensor")
        value = np.frombuffer(reader.take(width), dtype=dtype).astype(_UINT[width])
        return np.full(numel, value[0], dtype=_UINT[width])
    if method == _SYMBOLS:
        k = reader.varint()
        if not 1 <= k <= MAX_SYMBOLS:
            raise ArchiveError(f"entropy blob: symbol table of {k} entries (1..{MAX_SYMBOLS} allowed)")
        values = np.frombuffer(reader.take(k * width), dtype=dtype).astype(_UINT[width])
        return values[_decode_stream(reader, numel, k)]
    if method == _PLANES:
        planes = [_decode_stream(reader, numel, 256) for _ in range(width)]  # sized by the blob, not by meta
        out = np.zeros(numel, dtype=_UINT[width])
        for j, plane in enumerate(planes):
            out |= plane.astype(_UINT[width]) << np.array(8 * j, dtype=_UINT[width])
        return out
    if method == _SPARSE and allow_sparse:
        return _decode_sparse(reader, numel, width)
    raise ArchiveError(f"entropy blob: method byte {method} is not valid here")


# ------------------------------------------------------------------------------------ Huffman streams


def _code_lengths(counts: np.ndarray) -> np.ndarray:
    """Huffman code length of every symbol (0 for unused ones), limited to MAX_CODE_BITS."""
    counts = np.asarray(counts, dtype=np.int64)
    used = np.flatnonzero(counts)
    lengths = np.zeros(counts.size, dtype=np.int64)
    if used.size == 1:
        lengths[used] = 1
        return lengths
    weights = counts[used].copy()
    while True:
        heap = [(int(w), i, (i,)) for i, w in enumerate(weights)]
        heapq.heapify(heap)
        depth = np.zeros(used.size, dtype=np.int64)
        tie = len(heap)
        while len(heap) > 1:
            w1, _, a = heapq.heappop(heap)
            w2, _, b = heapq.heappop(heap)
            merged = a + b
            depth[list(merged)] += 1
            heapq.heappush(heap, (w1 + w2, tie, merged))
            tie += 1
        if depth.max() <= MAX_CODE_BITS:
            lengths[used] = depth
            return lengths
        weights = (weights + 1) // 2  # flatten the distribution until the longest code fits


def _stream_size(counts: np.ndarray) -> int:
    """Bytes :func:`_encode_stream` writes for symbols with these counts (header estimated to a few bytes)."""
    counts = np.asarray(counts, dtype=np.int64)
    n = int(counts.sum())
    if n == 0 or np.count_nonzero(counts) == 1:
        return 4
    lengths = _code_lengths(counts)
    payload = (int((counts * lengths).sum()) + 7) // 8
    chunks = -(-n // _chunk_len(n))
    return 8 + (counts.size + 1) // 2 + payload + 3 * (chunks - 1)


def _chunk_len(n: int) -> int:
    """Symbols per independently decodable chunk: the decoder loops this many times over all chunks."""
    return min(n, max(4096, int(4 * math.isqrt(n))))


def _canonical(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(symbols in canonical order, each one's first slot in a 2**MAX_CODE_BITS table); checks Kraft."""
    used = np.flatnonzero(lengths)
    order = used[np.lexsort((used, lengths[used]))]
    span = np.left_shift(1, MAX_CODE_BITS - lengths[order])
    ends = np.cumsum(span)
    if ends.size and ends[-1] > (1 << MAX_CODE_BITS):
        raise ArchiveError("entropy blob: Huffman code lengths violate Kraft's inequality (corrupt code table)")
    return order, ends - span


def _encode_stream(symbols: np.ndarray, alphabet: int) -> bytes:
    n = symbols.size
    counts = np.bincount(symbols, minlength=alphabet)
    used = np.flatnonzero(counts)
    if n == 0 or used.size == 1:
        return bytes([_STREAM_CONST]) + _varint(int(used[0]) if n else 0)
    lengths = _code_lengths(counts)
    if alphabet <= 256 and int((counts * lengths).sum()) + 8 * (alphabet // 2) >= 8 * n:
        return bytes([_STREAM_RAW8]) + symbols.astype(np.uint8).tobytes()
    order, starts = _canonical(lengths)
    codes = np.zeros(alphabet, dtype=np.int64)
    codes[order] = starts >> (MAX_CODE_BITS - lengths[order])
    packed = (codes << 4 | lengths).astype(np.int32)[symbols]  # one gather for code and length
    sym_len = (packed & 15).astype(np.int64)
    sym_code = (packed >> 4).astype(np.int64)
    del packed
    ends = np.cumsum(sym_len)
    total_bits = int(ends[-1])
    chunk = _chunk_len(n)
    chunk_starts = np.concatenate(([0], ends[chunk - 1:-1:chunk]))
    payload = _pack_codes(sym_code, sym_len, ends - sym_len, total_bits)
    packed_lengths = lengths.astype(np.uint8)
    if packed_lengths.size % 2:
        packed_lengths = np.append(packed_lengths, np.uint8(0))
    nibbles = (packed_lengths[0::2] << 4) | packed_lengths[1::2]
    header = bytes([_STREAM_HUFFMAN]) + nibbles.tobytes() + _varint(total_bits)
    header += b"".join(_varint(int(d)) for d in np.diff(chunk_starts))
    return header + payload


def _pack_codes(codes: np.ndarray, lengths: np.ndarray, starts: np.ndarray, total_bits: int) -> bytes:
    """Concatenate variable-length codes MSB-first. A code of at most 15 bits starting at bit offset o
    lies within the 3 bytes from o // 8; codes never overlap, so summing every code's byte contributions
    (a weighted bincount, exact in float64 for values < 256) is the same as OR-ing them."""
    nbytes = (total_bits + 7) // 8
    out = np.zeros(nbytes + 2, dtype=np.float64)
    for lo in range(0, codes.size, _ENCODE_PIECE):
        hi = min(codes.size, lo + _ENCODE_PIECE)
        start = starts[lo:hi]
        aligned = codes[lo:hi] << (24 - (start & 7) - lengths[lo:hi])
        byte = start >> 3
        for k in range(3):
            out += np.bincount(byte + k, weights=(aligned >> (16 - 8 * k)) & 0xFF, minlength=nbytes + 2)
    return out[:nbytes].astype(np.uint8).tobytes()


def _decode_stream(reader: _Reader, n: int, alphabet: int) -> np.ndarray:
    kind = reader.u8()
    if kind == _STREAM_CONST:
        symbol = reader.varint()
        if n and symbol >= alphabet:
            raise ArchiveError(f"entropy blob: constant symbol {symbol} outside alphabet of {alphabet}")
        return np.full(n, symbol, dtype=np.int64)
    if kind == _STREAM_RAW8:
        if alphabet > 256:
            raise ArchiveError("entropy blob: byte stream for an alphabet wider than a byte")
        out = np.frombuffer(reader.take(n), dtype=np.uint8).astype(np.int64)
        if out.size and out.max() >= alphabet:
            raise ArchiveError(f"entropy blob: symbol {int(out.max())} outside alphabet of {alphabet}")
        return out
    if kind != _STREAM_HUFFMAN:
        raise ArchiveError(f"entropy blob: unknown stream kind {kind}")
    nibbles = np.frombuffer(reader.take((alphabet + 1) // 2), dtype=np.uint8)
    lengths = np.stack([nibbles >> 4, nibbles & 15], axis=1).reshape(-1)[:alphabet].astype(np.int64)
    if n == 0 or np.count_nonzero(lengths) < 2:
        raise ArchiveError("entropy blob: Huffman stream needs at least two coded symbols")
    order, starts = _canonical(lengths)
    total_bits = reader.varint()
    chunk = _chunk_len(n)
    n_chunks = -(-n // chunk)
    deltas = [reader.varint() for _ in range(n_chunks - 1)]
    chunk_starts = np.concatenate(([0], np.cumsum(np.asarray(deltas, dtype=np.int64)))) if deltas else \
        np.zeros(1, dtype=np.int64)
    if chunk_starts[-1] > total_bits or not n <= total_bits <= MAX_CODE_BITS * n:  # every code is 1..15 bits
        raise ArchiveError("entropy blob: Huffman chunk offsets run past the stream")
    payload = np.frombuffer(reader.take((total_bits + 7) // 8), dtype=np.uint8)

    table_size = 1 << MAX_CODE_BITS
    span = np.left_shift(1, MAX_CODE_BITS - lengths[order])
    table_sym = np.full(table_size, alphabet, dtype=np.int64)  # `alphabet` marks a prefix no code has
    table_len = np.zeros(table_size, dtype=np.int64)
    filled = int(span.sum())
    table_sym[:filled] = np.repeat(order, span)
    table_len[:filled] = np.repeat(lengths[order], span)
    # 32-bit big-endian word at every byte offset; padding covers the reads a short last chunk makes
    pad = (chunk * MAX_CODE_BITS) // 8 + 8
    buf = np.concatenate((payload, np.zeros(pad, dtype=np.uint8))).astype(np.uint32)
    words = (buf[:-3] << 24) | (buf[1:-2] << 16) | (buf[2:-1] << 8) | buf[3:]
    mask = np.int64(table_size - 1)
    pos = chunk_starts.copy()
    out = np.empty((chunk, n_chunks), dtype=np.int64)
    last_len = n - (n_chunks - 1) * chunk
    last_end = None
    for i in range(chunk):
        if i == last_len:
            last_end = int(pos[-1])
        window = (words[pos >> 3].astype(np.int64) >> (32 - MAX_CODE_BITS - (pos & 7))) & mask
        out[i] = table_sym[window]
        pos += table_len[window]
    if last_end is None:
        last_end = int(pos[-1])
    ends = np.append(pos[:-1], last_end)
    if not np.array_equal(ends, np.append(chunk_starts[1:], total_bits)):
        raise ArchiveError("entropy blob: Huffman chunks do not end where the next begins (corrupt stream)")
    symbols = out.T.reshape(-1)[:n]
    if symbols.size and symbols.max() >= alphabet:
        raise ArchiveError("entropy blob: Huffman stream holds a bit pattern that is no code (corrupt stream)")
    return symbols


# ---------------------------------------------------------------------------------------- bytes I/O


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


class _Reader:
    """Bounds-checked reads from a blob: running out of bytes is an ArchiveError, never an IndexError."""

    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int) -> bytes:
        if n < 0 or n > self.remaining():
            raise ArchiveError(f"entropy blob truncated: needs {n} more bytes at offset {self.pos}, "
                               f"has {self.remaining()}")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def varint(self) -> int:
        value = shift = 0
        while True:
            byte = self.u8()
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
            if shift > 63:
                raise ArchiveError(f"entropy blob: varint longer than 64 bits at offset {self.pos}")
