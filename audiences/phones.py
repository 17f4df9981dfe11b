"""Phone numbers a column at a time, for the common North American spellings.

:func:`cleanroom.audiences.identifiers.normalize_phone` is the reference: one
``phonenumbers`` validation per number, ~20-30 µs each, which made phones the
most expensive identifier to hash (a million-row log carries a few hundred
thousand distinct spellings). Here the validation runs over whole Arrow
arrays: phonenumbers' own metadata (its regular expressions and possible
lengths, read at run time, never copied) is evaluated by Arrow's RE2 engine,
following the decision procedure of ``phonenumbers.is_valid_number`` for a
country calling code:

* the number's region is the first of the calling code's regions (in
  phonenumbers' order) whose leading digits prefix the number or, for a region
  without leading digits, whose number types know it;
* the number is valid when it has a known type in that region: it matches the
  region's general description and at least one type's description (pattern
  matched in full and, where the description lists them, a possible length).

Values of any other shape stay with the scalar reference (the reader routes
them there); tests compare both paths on fuzzed spellings.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import phonenumbers
import pyarrow as pa
import pyarrow.compute as pc
from phonenumbers.phonemetadata import PhoneMetadata

from .identifiers import NANP_PATTERN, NANP_REGIONS

__all__ = ["nanp_national_numbers", "valid_national_numbers"]

BoolArray = npt.NDArray[np.bool_]

# The descriptions _number_type_helper tries after the general one; any match
# gives the number a type, and a typed number in its region is valid.
_TYPE_DESCRIPTIONS = (
    "premium_rate",
    "toll_free",
    "shared_cost",
    "voip",
    "personal_number",
    "pager",
    "uan",
    "voicemail",
    "fixed_line",
    "mobile",
)


def _mask(array: pa.Array | pa.ChunkedArray) -> BoolArray:
    return np.asarray(array.to_numpy(zero_copy_only=False), dtype=np.bool_)


def _matches_description(desc: Any, numbers: pa.Array, lengths: npt.NDArray[np.int64]) -> BoolArray:
    """phonenumbers' _is_number_matching_desc for every number."""
    if desc is None or not desc.national_number_pattern:
        return np.zeros(len(numbers), dtype=np.bool_)
    matched = _mask(pc.match_substring_regex(numbers, f"^(?:{desc.national_number_pattern})$"))
    if desc.possible_length:
        matched &= np.isin(lengths, desc.possible_length)
    return matched


def _has_known_type(metadata: Any, numbers: pa.Array, lengths: npt.NDArray[np.int64]) -> BoolArray:
    known = np.zeros(len(numbers), dtype=np.bool_)
    for name in _TYPE_DESCRIPTIONS:
        known |= _matches_description(getattr(metadata, name), numbers, lengths)
    return known & _matches_description(metadata.general_desc, numbers, lengths)


def valid_national_numbers(country_code: int, numbers: pa.Array) -> BoolArray:
    """``phonenumbers.is_valid_number`` of (``country_code``, n) for each national number n.

    ``numbers`` holds national significant numbers as digit strings without
    leading zeros (as ``str(PhoneNumber.national_number)`` writes them).
    """
    numbers = pa.array(numbers, pa.string()) if not isinstance(numbers, pa.Array) else numbers
    lengths = np.asarray(pc.utf8_length(numbers).to_numpy(zero_copy_only=False), dtype=np.int64)
    valid = np.zeros(len(numbers), dtype=np.bool_)
    regions = phonenumbers.COUNTRY_CODE_TO_REGION_CODE.get(country_code, ())
    undecided = np.arange(len(numbers))
    for region in regions:
        if not len(undecided):
            break
        # As is_valid_number_for_region looks it up ("001": non-geographic numbers).
        metadata = PhoneMetadata.metadata_for_region_or_calling_code(country_code, region)
        if metadata is None:
            continue
        subset = numbers.take(pa.array(undecided))
        if len(regions) > 1 and metadata.leading_digits is not None:
            claimed = _mask(pc.match_substring_regex(subset, f"^(?:{metadata.leading_digits})"))
            rows = undecided[claimed]
            valid[rows] = _has_known_type(metadata, numbers.take(pa.array(rows)), lengths[rows])
        else:
            known = _has_known_type(metadata, subset, lengths[undecided])
            # A calling code of one region decides all its numbers; otherwise the
            # region claims the numbers it knows and the rest try the next region.
            claimed = known if len(regions) > 1 else np.ones(len(subset), dtype=np.bool_)
            valid[undecided[claimed]] = known[claimed]
        undecided = undecided[~claimed]
    return valid


def nanp_national_numbers(
    values: pa.Array, default_region: str | None
) -> tuple[BoolArray, pa.Array]:
    """Which (trimmed, ASCII) values ``normalize_phone`` reads as +1 numbers, and their 10 digits.

    A value qualifies when it is one of the spellings of ``NANP_PATTERN`` and
    either carries +1 or the default region is the US or Canada; the digits
    are ``""`` elsewhere.
    """
    parts = pc.extract_regex(values, f"^(?:{NANP_PATTERN})$")
    shaped = _mask(parts.is_valid())
    if default_region not in NANP_REGIONS:
        shaped &= _mask(pc.not_equal(parts.field("plus"), ""))
    area = parts.field("area")
    none = pa.scalar("", type=area.type)
    digits = pc.binary_join_element_wise(
        area, parts.field("area_plain"), parts.field("exchange"), parts.field("line"), none
    )
    return shaped, digits
