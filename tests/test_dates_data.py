"""The date generator: surface forms that mean one date, and a held-out split of whole templates."""

from __future__ import annotations

import datetime as dt
import itertools

import pytest

from training.tasks.translator import dates
from training.tasks.translator.codec import Codec

NOV_27 = dt.date(2026, 11, 27)


@pytest.mark.parametrize(
    ("template", "text"),
    [
        (dates.Template("en", ("Do", " of ", "MMMM", " ", "YYYY")), "27th of November 2026"),
        (dates.Template("num", ("M", "/", "D", "/", "YY")), "11/27/26"),
        (dates.Template("en", ("MMM", " ", "D", ", ", "YYYY")), "Nov 27, 2026"),
        (dates.Template("ja", ("YYYY", "年", "M", "月", "D", "日")), "2026年11月27日"),
        (dates.Template("de", ("W", ", ", "D", ". ", "MMMM", " ", "YYYY")), "Freitag, 27. November 2026"),
        (dates.Template("fr", ("le ", "Do", " ", "MMMM", " ", "YYYY"), "upper"), "LE 27 NOVEMBRE 2026"),
        (dates.Template("num", ("DD", ".", "MM", ".", "YY")), "27.11.26"),
    ],
)
def test_templates_write_the_date_as_people_do(template: dates.Template, text: str) -> None:
    assert template.render(NOV_27) == text


def test_ordinals_and_two_digit_years_follow_their_conventions() -> None:
    ordinal = dates.Template("en", ("Do",))
    assert [ordinal.render(dt.date(2001, 1, d)) for d in (1, 2, 3, 4, 11, 12, 13, 21, 22, 23)] == [
        "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "23rd",
    ]  # fmt: skip
    assert dates.Template("fr", ("Do",)).render(dt.date(2001, 1, 1)) == "1er"
    short = dates.Template("num", ("YY",))
    assert short.render(dt.date(1950, 1, 1)) == "50" and short.render(dt.date(2049, 1, 1)) == "49"


def test_held_out_templates_are_never_trained_on_and_made_of_seen_parts() -> None:
    split = dates.split_templates()
    train_keys = {t.key for t in split.train}
    assert split.heldout and not train_keys & {t.key for t in split.heldout}
    assert len(train_keys) + len(split.heldout) == len(dates.all_templates())
    seen_parts = {(t.locale, part) for t in split.train for part in t.parts}
    seen_cases = {(t.locale, t.case) for t in split.train}
    for template in split.heldout:
        assert {(template.locale, part) for part in template.parts} <= seen_parts, template.key
        assert (template.locale, template.case) in seen_cases, template.key
    assert {t.locale for t in split.heldout} == {t.locale for t in split.train}
    # Two fields with no separator between them (YYYYMMDD) occur in one template only: it is a
    # part of its own, so it is always trained on, never held out.
    adjacent = {(t.locale, a, b) for t in split.train for a, b in itertools.pairwise(t.parts) if {a, b} <= dates.FIELDS}
    assert ("num", "YYYY", "MM") in adjacent
    for template in split.heldout:
        pairs = itertools.pairwise(template.parts)
        assert not any({a, b} <= dates.FIELDS for a, b in pairs), template.key


def test_samples_are_seeded_and_every_character_is_in_the_vocabulary() -> None:
    split = dates.split_templates()
    first = dates.sample(split.heldout, 300, 5)
    assert first == dates.sample(split.heldout, 300, 5) and first != dates.sample(split.heldout, 300, 6)
    codec = Codec.for_dates()
    texts = [text for text, _ in first + dates.sample(split.train, 300, 5)]
    _chars, mask = codec.encode_sources(texts)  # raises on a character outside the vocabulary
    assert mask.sum(axis=1).tolist() == [len(t) for t in texts]
    assert max(len(t) for t in texts) <= dates.MAX_INPUT_CHARS
    for _, iso in first:
        assert dates.FIRST_DATE <= dt.date.fromisoformat(iso) <= dates.LAST_DATE


def test_the_codec_refuses_text_it_cannot_encode() -> None:
    codec = Codec.for_dates()
    with pytest.raises(ValueError, match="characters"):
        codec.encode_sources([""])
    with pytest.raises(ValueError, match="not in the vocabulary"):
        codec.encode_sources(["Nov 27, 2026 ☃"])
    previous, targets = codec.encode_targets(["2026-11-27"])
    assert codec.decode_target(targets[0]) == "2026-11-27"
    assert previous[0, 0] == codec.target.index("<start>") and (previous[0, 1:] == targets[0, :-1]).all()
