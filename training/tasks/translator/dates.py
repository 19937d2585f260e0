"""Dates written many ways, for the date-normalisation translator ("Nov 27, 2026" -> "2026-11-27").

A *template* is one surface form: a locale, a sequence of literal text and fields (``D`` day,
``Do`` ordinal day, ``MM`` padded month, ``MMMM`` month name, ``YY`` two-digit year, ``W``
weekday...), and a letter case; the templates are the cross product of each locale's choices.
The held-out split is a set of whole templates (:data:`HELDOUT_FRACTION`, chosen with a fixed
seed), so the held-out score measures a new *way of writing* a date. Years are 1950-2049 (``YY``
from 50 up is 19YY); an all-numeric order is fixed by its separator. Everything is seeded.
Why these choices: docs/attention.md, "The data".
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

FIRST_DATE = dt.date(1950, 1, 1)
LAST_DATE = dt.date(2049, 12, 31)
#: The fraction of templates held out of training (never seen), and the seed that picks them.
HELDOUT_FRACTION = 0.15
HELDOUT_SEED = 20261127
#: Longest surface form the translator reads (characters); the longest template renders shorter.
MAX_INPUT_CHARS = 48
DATA_DESCRIPTION = (
    "generated date surface forms (training/tasks/translator/dates.py): 9 locales, "
    f"{int(HELDOUT_FRACTION * 100)} % of templates held out, dates {FIRST_DATE}..{LAST_DATE}"
)

MONTHS = {
    "en": "January February March April May June July August September October November December",
    "fr": "janvier février mars avril mai juin juillet août septembre octobre novembre décembre",
    "es": "enero febrero marzo abril mayo junio julio agosto septiembre octubre noviembre diciembre",
    "de": "Januar Februar März April Mai Juni Juli August September Oktober November Dezember",
    "it": "gennaio febbraio marzo aprile maggio giugno luglio agosto settembre ottobre novembre dicembre",
    "pt": "janeiro fevereiro março abril maio junho julho agosto setembro outubro novembro dezembro",
}
MONTH_ABBREVIATIONS = {
    "en": "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec",
    "fr": "janv. févr. mars avr. mai juin juil. août sept. oct. nov. déc.",
    "es": "ene feb mar abr may jun jul ago sep oct nov dic",
    "de": "Jan Feb Mär Apr Mai Jun Jul Aug Sep Okt Nov Dez",
    "it": "gen feb mar apr mag giu lug ago set ott nov dic",
    "pt": "jan fev mar abr mai jun jul ago set out nov dez",
}
WEEKDAYS = {  # Monday first, as datetime.weekday() counts
    "en": "Monday Tuesday Wednesday Thursday Friday Saturday Sunday",
    "fr": "lundi mardi mercredi jeudi vendredi samedi dimanche",
    "es": "lunes martes miércoles jueves viernes sábado domingo",
    "de": "Montag Dienstag Mittwoch Donnerstag Freitag Samstag Sonntag",
    "it": "lunedì martedì mercoledì giovedì venerdì sabato domenica",
    "pt": "segunda-feira terça-feira quarta-feira quinta-feira sexta-feira sábado domingo",
    "ja": "(月) (火) (水) (木) (金) (土) (日)",
    "zh": "星期一 星期二 星期三 星期四 星期五 星期六 星期日",
    "ko": "월요일 화요일 수요일 목요일 금요일 토요일 일요일",
}
WEEKDAY_ABBREVIATIONS = {"en": "Mon Tue Wed Thu Fri Sat Sun"}
CASES = ("as_is", "upper", "lower")

Part = str  # a field name in FIELDS, or literal text
FIELDS = frozenset({"D", "DD", "Do", "M", "MM", "MMM", "MMMM", "YY", "YYYY", "W", "Wa"})


@dataclass(frozen=True)
class Template:
    """One surface form: ``parts`` (fields and literal text) rendered in ``locale``, then cased."""

    locale: str
    parts: tuple[Part, ...]
    case: str = "as_is"

    @property
    def key(self) -> str:
        """A readable, unique name of the template, e.g. ``en|MMM| |D|, |YYYY|as_is``."""
        return "|".join((self.locale, *self.parts, self.case))

    def render(self, date: dt.date) -> str:
        text = "".join(_field(self.locale, part, date) if part in FIELDS else part for part in self.parts)
        if self.case == "upper":
            return text.upper()
        return text.lower() if self.case == "lower" else text


def normalise(date: dt.date) -> str:
    """The target: ISO 8601, ``YYYY-MM-DD``."""
    return date.isoformat()


def _ordinal(locale: str, day: int) -> str:
    if locale == "fr":
        return "1er" if day == 1 else str(day)
    if locale != "en":
        return str(day)
    suffix = "th" if 11 <= day % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    return f"{day}{suffix}"


def _field(locale: str, field: str, date: dt.date) -> str:
    names = {
        "MMMM": MONTHS,
        "MMM": MONTH_ABBREVIATIONS,
    }
    if field in names:
        return names[field][locale].split()[date.month - 1]
    if field == "W":
        return WEEKDAYS[locale].split()[date.weekday()]
    if field == "Wa":
        return WEEKDAY_ABBREVIATIONS[locale].split()[date.weekday()]
    return {
        "D": str(date.day),
        "DD": f"{date.day:02d}",
        "Do": _ordinal(locale, date.day),
        "M": str(date.month),
        "MM": f"{date.month:02d}",
        "YY": f"{date.year % 100:02d}",
        "YYYY": str(date.year),
    }[field]


# -- the templates ---------------------------------------------------------------------------


def _numeric() -> Iterator[Template]:
    """All-number forms; the separator fixes the day-month order (module docstring)."""
    for day, month in (("D", "M"), ("DD", "MM")):
        for sep in ("-", "/", "."):
            yield Template("num", ("YYYY", sep, month, sep, day))
        for year in ("YYYY", "YY"):
            yield Template("num", (month, "/", day, "/", year))
            for sep in (".", "-", ". "):
                yield Template("num", (day, sep, month, sep, year))
    yield Template("num", ("YYYY", "MM", "DD"))


def _english() -> Iterator[Template]:
    prefixes: list[tuple[Part, ...]] = [(), ("W", ", "), ("Wa", " "), ("Wa", ", ")]
    months = [("MMMM",), ("MMM",), ("MMM", ".")]
    for prefix, month, case in itertools.product(prefixes, months, CASES):
        forms: list[tuple[Part, ...]] = []
        for day in ("D", "DD", "Do"):
            for year in (("YYYY",), ("'", "YY")):
                forms.append((day, " ", *month, " ", *year))  # 27 Nov 2026
                forms.append((*month, " ", day, ", ", *year))  # Nov 27, 2026
                forms.append((*month, " ", day, " ", *year))  # Nov 27 2026
            forms.append((day, "-", *month, "-", "YYYY"))  # 27-Nov-2026
        forms.append(("Do", " of ", *month, " ", "YYYY"))  # 27th of November 2026
        forms.append(("Do", " of ", *month, ", ", "YYYY"))
        forms.append(("the ", "Do", " of ", *month, ", ", "YYYY"))
        forms.append(("YYYY", " ", *month, " ", "D"))  # 2026 Nov 27
        for form in forms:
            yield Template("en", (*prefix, *form), case)


def _romance_and_german() -> Iterator[Template]:
    for case in CASES:
        for prefix in ((), ("W", " ")):
            for day, month in itertools.product(("D", "Do"), ("MMMM", "MMM")):
                yield Template("fr", (*prefix, day, " ", month, " ", "YYYY"), case)
                yield Template("fr", ("le ", *prefix, day, " ", month, " ", "YYYY"), case)
            for month in ("MMMM", "MMM"):
                yield Template("it", (*prefix, "D", " ", month, " ", "YYYY"), case)
        for prefix in ((), ("W", ", ")):
            for day in ("D", "DD"):
                yield Template("es", (*prefix, day, " de ", "MMMM", " de ", "YYYY"), case)
                yield Template("pt", (*prefix, day, " de ", "MMMM", " de ", "YYYY"), case)
                for locale in ("es", "pt"):
                    yield Template(locale, (*prefix, day, " ", "MMMM", " ", "YYYY"), case)
                    yield Template(locale, (*prefix, day, "-", "MMM", "-", "YYYY"), case)
            for day in ("D", "DD"):
                yield Template("de", (*prefix, day, ". ", "MMMM", " ", "YYYY"), case)
                yield Template("de", (*prefix, day, ". ", "MMM", ". ", "YYYY"), case)
                yield Template("de", (*prefix, day, ". ", "MMMM", " ", "YY"), case)


def _east_asian() -> Iterator[Template]:
    for (day, month), spaced in itertools.product((("D", "M"), ("DD", "MM")), (False, True)):
        gap = " " if spaced else ""
        for locale in ("ja", "zh"):
            base = ("YYYY", gap + "年" + gap, month, gap + "月" + gap, day, gap + "日")
            yield Template(locale, base)
            yield Template(locale, (*base, "W") if locale == "ja" else (*base, " ", "W"))
        korean = ("YYYY", "년 ", month, "월 ", day, "일")
        yield Template("ko", korean if spaced else ("YYYY", "년", month, "월", day, "일"))
        yield Template("ko", (*korean, " ", "W"))
        yield Template("ko", ("YYYY", ". ", month, ". ", day, ".") if spaced else ("YYYY", ".", month, ".", day, "."))


def all_templates() -> list[Template]:
    """Every template, deduplicated, in a fixed order."""
    seen: dict[str, Template] = {}
    for template in itertools.chain(_numeric(), _english(), _romance_and_german(), _east_asian()):
        seen.setdefault(template.key, template)
    return list(seen.values())


@dataclass(frozen=True)
class TemplateSplit:
    """Templates for training and the held-out templates never trained on."""

    train: tuple[Template, ...]
    heldout: tuple[Template, ...]


def _joins_fields(template: Template) -> bool:
    """Whether two fields touch with no literal between them (``YYYYMMDD``): the only form that
    reads digits without a separator, so holding it out would test a part never seen in training."""
    return any(a in FIELDS and b in FIELDS for a, b in itertools.pairwise(template.parts))


def split_templates(fraction: float = HELDOUT_FRACTION, seed: int = HELDOUT_SEED) -> TemplateSplit:
    """Hold out ``fraction`` of the templates of every locale (at least one each), seeded; a
    template with fields joined without a separator is always trained on (:func:`_joins_fields`)."""
    rng = np.random.default_rng(seed)
    train: list[Template] = []
    heldout: list[Template] = []
    templates = all_templates()
    for locale in dict.fromkeys(t.locale for t in templates):
        group = [t for t in templates if t.locale == locale]
        order = [i for i in rng.permutation(len(group)).tolist() if not _joins_fields(group[i])]
        count = max(1, round(fraction * len(group)))
        held = set(order[:count])
        heldout += [t for i, t in enumerate(group) if i in held]
        train += [t for i, t in enumerate(group) if i not in held]
    return TemplateSplit(tuple(train), tuple(heldout))


def random_dates(rng: np.random.Generator, count: int) -> list[dt.date]:
    """``count`` dates drawn uniformly from FIRST_DATE..LAST_DATE."""
    span = (LAST_DATE - FIRST_DATE).days + 1
    return [FIRST_DATE + dt.timedelta(days=int(d)) for d in rng.integers(0, span, count)]


def sample(templates: Sequence[Template], count: int, seed: int | Sequence[int]) -> list[tuple[str, str]]:
    """``count`` seeded ``(surface form, ISO date)`` pairs.

    A locale is drawn uniformly, then one of its templates, then a date: English has most of
    the templates, and drawing templates uniformly would leave the other locales rare."""
    rng = np.random.default_rng(seed)
    groups: dict[str, list[Template]] = {}
    for template in templates:
        groups.setdefault(template.locale, []).append(template)
    locales = list(groups)
    picks = [groups[locales[g]] for g in rng.integers(0, len(locales), count)]
    chosen = [group[int(rng.integers(0, len(group)))] for group in picks]
    return [(t.render(d), normalise(d)) for t, d in zip(chosen, random_dates(rng, count), strict=True)]


def alphabet(templates: Sequence[Template]) -> list[str]:
    """Every character any of ``templates`` can write, sorted: month and weekday names of every
    case, digits, and the literal text."""
    chars: set[str] = set("0123456789")
    for template in templates:
        for date in (dt.date(2001, m, d) for m in range(1, 13) for d in (1, 2, 3, 4, 5, 6, 7)):
            chars.update(template.render(date))
    return sorted(chars)
