"""Column-at-a-time phone validation against phonenumbers itself."""

from __future__ import annotations

import random

import numpy as np
import phonenumbers
import pyarrow as pa
import pytest

from cleanroom.audiences.phones import nanp_national_numbers, valid_national_numbers


def reference(country_code: int, national: str) -> bool:
    number = phonenumbers.PhoneNumber(country_code=country_code, national_number=int(national))
    return bool(phonenumbers.is_valid_number(number))


@pytest.mark.parametrize(
    ("country_code", "lengths"),
    [
        (1, (10,)),  # 25 regions, most told apart by leading digits
        (1, (7, 9, 11)),  # lengths no North American region has
        (7, (10,)),  # Russia and Kazakhstan share +7
        (44, (9, 10)),  # the UK and the Crown dependencies
        (86, (10, 11)),  # one region
        (999, (8,)),  # no region at all
        (800, (8,)),  # non-geographic (freephone)
    ],
)
def test_validity_equals_phonenumbers(country_code: int, lengths: tuple[int, ...]) -> None:
    rng = random.Random(f"{country_code}-{lengths}")
    numbers = []
    for _ in range(4000):
        length = rng.choice(lengths)
        numbers.append(str(rng.randrange(1, 10)) + "".join(rng.choices("0123456789", k=length - 1)))
    if country_code == 1 and lengths == (10,):  # every area code, valid or not
        numbers += [
            f"{area}{rng.randrange(2, 10)}{rng.randrange(10**6):06d}" for area in range(200, 1000)
        ]
    got = valid_national_numbers(country_code, pa.array(numbers))
    want = np.array([reference(country_code, n) for n in numbers])
    assert got.dtype == np.bool_ and got.tolist() == want.tolist()
    if country_code not in (999,) and lengths != (7, 9, 11):
        assert want.any(), "the sample must contain valid numbers to mean anything"


def test_empty_input() -> None:
    assert valid_national_numbers(1, pa.array([], pa.string())).tolist() == []


@pytest.mark.parametrize(
    ("value", "region", "shaped", "digits"),
    [
        ("(201) 555-0123", "US", True, "2015550123"),
        ("201.555.0123", "CA", True, "2015550123"),
        ("2015550123", None, False, "2015550123"),  # no +1 and no North American region
        ("+1 201 555 0123", None, True, "2015550123"),
        ("+1 201 555 0123", "GB", True, "2015550123"),
        ("(201 555-0123", "US", False, ""),
        ("1 201 555 0123", "US", False, ""),
        ("101-555-0123", "US", False, ""),  # area codes start with 2-9
    ],
)
def test_nanp_shapes(value: str, region: str | None, shaped: bool, digits: str) -> None:
    got_shaped, got_digits = nanp_national_numbers(pa.array([value]), region)
    assert got_shaped.tolist() == [shaped]
    if shaped or digits:
        assert got_digits.to_pylist() == [digits]
