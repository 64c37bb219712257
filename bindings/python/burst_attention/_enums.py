"""The enumerations of the C ABI as IntEnums, and parsing of user spellings.

Config fields holding these are int32_t in C. `Layout("bshd")`-style strings,
the IntEnum members and plain ints are all accepted by `Context.plan`; an int out
of range is passed to the library, which rejects it with INVALID_ARGUMENT.
"""

from __future__ import annotations

import enum


class Layout(enum.IntEnum):
    BSHD = 0  # q/k/v/out: [batch, seq_len_local, heads, head_dim] (flash-attn)
    BHSD = 1  # q/k/v/out: [batch, heads, seq_len_local, head_dim] (torch SDPA)


class DType(enum.IntEnum):
    F32 = 0   # float32
    BF16 = 1  # bfloat16: ml_dtypes.bfloat16 arrays, or uint16 arrays holding the bits
    F16 = 2   # IEEE half: numpy.float16


class Mask(enum.IntEnum):
    NONE = 0
    CAUSAL = 1  # in global positions


class Distribution(enum.IntEnum):
    CONTIGUOUS = 0  # rank r holds one contiguous run of tokens (any split)
    ZIGZAG = 1      # 2P chunks (per sequence with packing); rank r: chunks r, 2P-1-r
    STRIPED = 2     # token t on rank t mod P


class Compute(enum.IntEnum):
    """The precision of the tile products (BURST_COMPUTE_*; include/burst_attention.h
    states the contract). `Context.plan(compute=None)` means DEFAULT."""
    DEFAULT = 0  # FAST for bf16 storage, EXACT for f32 and f16
    EXACT = 1    # fp32 products (DESIGN §3)
    FAST = 2     # q, k, v, dO, P, dS rounded to bf16; fp32 accumulation and softmax


class Pattern(enum.IntEnum):
    BURST = 0      # default: the BurstAttention ring
    RING = 1       # not yet supported by the library
    ALLGATHER = 2  # not yet supported by the library
    ULYSSES = 3    # not yet supported by the library
    AUTO = 4       # not yet supported by the library


# Module-level constants with the header's names (minus the BURST_ prefix).
LAYOUT_BSHD, LAYOUT_BHSD = Layout.BSHD, Layout.BHSD
DTYPE_F32, DTYPE_BF16, DTYPE_F16 = DType.F32, DType.BF16, DType.F16
MASK_NONE, MASK_CAUSAL = Mask.NONE, Mask.CAUSAL
DISTRIBUTION_CONTIGUOUS, DISTRIBUTION_ZIGZAG, DISTRIBUTION_STRIPED = (
    Distribution.CONTIGUOUS, Distribution.ZIGZAG, Distribution.STRIPED)
PATTERN_BURST, PATTERN_RING, PATTERN_ALLGATHER, PATTERN_ULYSSES, PATTERN_AUTO = (
    Pattern.BURST, Pattern.RING, Pattern.ALLGATHER, Pattern.ULYSSES, Pattern.AUTO)
COMPUTE_DEFAULT, COMPUTE_EXACT, COMPUTE_FAST = Compute.DEFAULT, Compute.EXACT, Compute.FAST


def parse(enum_type: type[enum.IntEnum], value, argument: str) -> int:
    """A config field's int32 value from a member, an int, or a case-insensitive name.

    Unknown names raise ValueError and non-int types TypeError (naming `argument`).
    Ints are returned as they are, so the library decides about out-of-range values.
    """
    if isinstance(value, enum.Enum):
        if not isinstance(value, enum_type):
            raise TypeError(f"{argument}: expected a {enum_type.__name__}, got {value!r}")
        return int(value)
    if isinstance(value, str):
        try:
            return int(enum_type[value.strip().upper()])
        except KeyError:
            names = ", ".join(repr(m.name.lower()) for m in enum_type)
            raise ValueError(f"{argument}: unknown value {value!r}; expected one of {names}") from None
    if isinstance(value, bool) or not isinstance(value, int):
        # numpy integers are fine; bools and floats are not
        try:
            import numpy as np
            if isinstance(value, np.integer):
                return int(value)
        except ImportError:  # pragma: no cover
            pass
        raise TypeError(f"{argument}: expected a {enum_type.__name__}, str or int, got {type(value).__name__}")
    return int(value)
