"""The planner's decision tables: a pure function of (listing, inventory, rules, now), no I/O."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pytest

from ibreports.archive import ObjectInfo
from ibreports.plan import Entry, Rules, conflict_key, plan
from ibreports.report import Outcome, Reason
from ibreports.statements import parse

NOW = 1_800_000_000.0  # 2027-01-15
DAY = 86400.0
NAME = "U1234567.DailyActivity.20261101.20261101.xml"
SKEY = "statements/U1234567/2026/11/" + NAME
OKEY = "encrypted/src/2026/11/" + NAME + ".pgp"


def rules(**overrides) -> Rules:
    return Rules(**{"source": "src", "settle_seconds": 120, "purge_days": 100, "warn_days": 14, **overrides})


def inv(*pairs) -> dict[str, ObjectInfo]:
    return {k: ObjectInfo(k, size) for k, size in pairs}


def outcome_of(result, name):
    return next(r for r in result.rows if r.name == name)


def fetched(result) -> list[str]:
    return [i.entry.name for i in result.items]


@pytest.mark.parametrize("age, planned", [(10, False), (119, False), (121, True), (5 * DAY, True),
                                          (-60, False), (-30 * DAY, True)])
def test_settle(age, planned):
    result = plan([Entry(NAME + ".pgp", 10, NOW - age)], {}, rules(), NOW)
    assert (fetched(result) == [NAME + ".pgp"]) is planned
    if not planned:
        row = outcome_of(result, NAME + ".pgp")
        assert (row.outcome, row.code) == (Outcome.WAITING, Reason.SETTLING)


@pytest.mark.parametrize("age_days, left", [(0, 100), (86, 14), (99.5, 1), (101, -1)])
def test_purge_horizon(age_days, left):
    result = plan([Entry(NAME + ".pgp", 10, NOW - age_days * DAY)], {}, rules(), NOW)
    assert outcome_of(result, NAME + ".pgp").days_left == left


def test_since_until_on_the_statement_date():
    names = [f"U1234567.Daily.202611{d:02d}.202611{d:02d}.xml.pgp" for d in (1, 10, 20)]
    listing = [Entry(n, 10, NOW - 5 * DAY) for n in names]
    result = plan(listing, {}, rules(since=date(2026, 11, 5), until=date(2026, 11, 15)), NOW)
    assert fetched(result) == [names[1]]
    assert [r.name for r in result.rows] == [names[1]]  # far from the purge: left out entirely


def test_outside_the_range_near_the_purge_is_reported_unless_archived():
    old = Entry("U1234567.Daily.20261001.20261001.xml.pgp", 10, NOW - 95 * DAY)
    archived = Entry("U1234567.Daily.20261002.20261002.xml.pgp", 10, NOW - 95 * DAY)
    keys = inv(("statements/U1234567/2026/10/U1234567.Daily.20261002.20261002.xml", 5),
               ("encrypted/src/2026/10/U1234567.Daily.20261002.20261002.xml.pgp", 10))
    result = plan([old, archived], keys, rules(since=date(2026, 11, 1)), NOW)
    assert [(r.name, r.outcome) for r in result.rows] == [(old.name, Outcome.OUT_OF_RANGE)]
    assert result.items == []


def test_archived_is_skipped_and_force_fetches_again():
    listing = [Entry(NAME + ".pgp", 10, NOW - DAY)]
    keys = inv((SKEY, 7), (OKEY, 10))
    assert outcome_of(plan(listing, keys, rules(), NOW), NAME + ".pgp").outcome == Outcome.ALREADY_ARCHIVED
    assert fetched(plan(listing, keys, rules(force=True), NOW)) == [NAME + ".pgp"]
    # keep_encrypted: the missing original means "not archived yet"
    assert fetched(plan(listing, inv((SKEY, 7)), rules(), NOW)) == [NAME + ".pgp"]
    assert fetched(plan(listing, inv((SKEY, 7)), rules(keep_encrypted=False), NOW)) == []


def test_plain_twin_in_the_same_listing_is_a_shadow():
    listing = [Entry(NAME, 30, NOW - DAY), Entry(NAME + ".pgp", 10, NOW - DAY)]
    result = plan(listing, {}, rules(), NOW)
    assert fetched(result) == [NAME + ".pgp"]
    row = outcome_of(result, NAME)
    assert (row.outcome, row.code) == (Outcome.REJECTED, Reason.SHADOW) and "encrypted" in row.reason


@pytest.mark.parametrize("suffix", ["pgp", "gpg", "asc"])
def test_plain_twin_arriving_after_the_encrypted_one_is_a_shadow(suffix):
    keys = inv((SKEY, 30), (f"encrypted/other-source/2026/11/{NAME}.{suffix}", 10))
    result = plan([Entry(NAME, 30, NOW - DAY)], keys, rules(), NOW)
    row = outcome_of(result, NAME)
    assert (row.outcome, row.code) == (Outcome.REJECTED, Reason.SHADOW) and result.items == []


def test_an_encrypted_original_that_never_decrypted_does_not_shadow_a_plain_delivery():
    keys = inv((f"encrypted/src/2026/11/{NAME}.pgp", 10))  # archived as evidence; no statement from it
    assert fetched(plan([Entry(NAME, 30, NOW - DAY)], keys, rules(), NOW)) == [NAME]


def test_plain_refused_where_allow_plain_is_false():
    result = plan([Entry(NAME, 30, NOW - DAY), Entry("x.csv", 3, NOW - DAY)], {}, rules(allow_plain=False), NOW)
    assert result.items == []
    for row in result.rows:
        assert (row.outcome, row.code) == (Outcome.REJECTED, Reason.PLAIN_REFUSED) and "allow_plain" in row.reason


def test_plain_delivery_of_an_archived_statement_with_other_content_is_a_conflict():
    result = plan([Entry(NAME, 31, NOW - DAY)], inv((SKEY, 30)), rules(), NOW)
    assert fetched(result) == [NAME] and "30 bytes" in result.items[0].conflict
    same = plan([Entry(NAME, 30, NOW - DAY)], inv((SKEY, 30)), rules(), NOW)
    assert outcome_of(same, NAME).outcome == Outcome.ALREADY_ARCHIVED and same.items == []


def test_an_open_conflict_keeps_a_file_unarchived_and_a_resolved_one_settles_the_same_delivery():
    quarantine = f"conflicts/src/2026/11/{NAME}.pgp.0123456789abcdef"
    held = inv((SKEY, 30), (OKEY, 10), (quarantine, 11), (quarantine + ".conflict.json", 500))
    entry = Entry(NAME + ".pgp", 11, NOW - DAY)
    result = plan([entry], held, rules(), NOW)
    assert fetched(result) == [NAME + ".pgp"]  # compared again on every run while the conflict is open
    assert plan([entry], held, rules(source="other", keep_encrypted=False), NOW).items == []  # not its conflict
    resolved = {**held, **inv((quarantine + ".resolution.json", 300))}
    row = outcome_of(plan([entry], resolved, rules(), NOW), NAME + ".pgp")
    assert (row.outcome, row.code) == (Outcome.ALREADY_ARCHIVED, Reason.CONFLICT)
    other = plan([Entry(NAME + ".pgp", 12, NOW - DAY)], resolved, rules(), NOW)
    assert fetched(other) == [NAME + ".pgp"]  # other bytes than the settled delivery: looked at again


def test_encrypted_delivery_whose_archived_original_differs_is_a_conflict():
    result = plan([Entry(NAME + ".pgp", 11, NOW - DAY)], inv((SKEY, 30), (OKEY, 10)), rules(), NOW)
    assert fetched(result) == [NAME + ".pgp"] and OKEY in result.items[0].conflict
    assert not plan([Entry(NAME + ".pgp", 11, NOW - DAY)], inv((SKEY, 30), (OKEY, 10)),
                    rules(keep_encrypted=False), NOW).items  # no original kept: nothing to compare


def test_on_demand_entries_skip_settle_and_purge():
    entry = Entry(NAME, 30, NOW, sha256="ab" * 32)  # made this very second
    result = plan([entry], {}, rules(listing=False, settle_seconds=3600), NOW)
    assert fetched(result) == [NAME]
    row = outcome_of(result, NAME)
    assert row.days_left == 100 and row.sha256 == "ab" * 32  # never "at risk of purge"


def test_archived_on_demand_entries_are_compared_not_trusted():
    produced = Entry(NAME, 30, NOW, path=Path("/staging/x"), sha256="ab" * 32)
    result = plan([produced], inv((SKEY, 30)), rules(listing=False), NOW)
    assert fetched(result) == [NAME] and result.items[0].recheck and not result.items[0].conflict
    other_size = plan([Entry(NAME, 31, NOW, path=Path("/staging/x"))], inv((SKEY, 30)), rules(listing=False), NOW)
    assert other_size.items[0].conflict


@dataclass(frozen=True)
class Recorded(ObjectInfo):
    """An inventory entry of an archive that records each object's SHA-256."""

    sha256: str = ""


def test_recorded_hashes_decide_on_demand_entries_without_reading_the_archive():
    entry = Entry(NAME, 30, NOW, path=Path("/staging/x"), sha256="ab" * 32)
    same = plan([entry], {SKEY: Recorded(SKEY, 30, "ab" * 32)}, rules(listing=False), NOW)
    assert same.items == [] and outcome_of(same, NAME).outcome == Outcome.ALREADY_ARCHIVED
    other = plan([entry], {SKEY: Recorded(SKEY, 30, "cd" * 32)}, rules(listing=False), NOW)
    assert "SHA-256" in other.items[0].conflict and not other.items[0].recheck


def test_bad_names_and_absurd_dates_fail_alone():
    listing = [Entry("../evil.xml", 3, NOW), Entry("bad\nname.xml", 3, float("nan")),
               Entry(NAME + ".pgp", 10, float("inf")), Entry("ok.xml.pgp", 10, NOW - DAY),
               Entry("negative.xml.pgp", -5, NOW - DAY)]
    result = plan(listing, {}, rules(), NOW)
    assert {r.name: r.code for r in result.rows if r.outcome == Outcome.REJECTED} == {
        "../evil.xml": Reason.BAD_NAME, "bad\nname.xml": Reason.BAD_NAME, "negative.xml.pgp": Reason.BAD_ENTRY}
    assert "ok.xml.pgp" in fetched(result)


@pytest.mark.parametrize("name", ["U1234567.DailyActivity.99991201.99991231.xml.pgp", "U1234567.Old.19891231.19891231.xml",
                                  "U1234567.Span.19891231.20261101.csv.pgp"])
def test_a_name_dated_outside_1990_to_next_year_is_refused_with_its_reason(name):
    result = plan([Entry(name, 10, NOW - DAY), Entry(NAME + ".pgp", 10, NOW - DAY)], {}, rules(), NOW)
    row = outcome_of(result, name)
    assert (row.outcome, row.code) == (Outcome.REJECTED, Reason.BAD_DATE)
    assert "outside 1990-01-01.." in row.reason and "it was not downloaded" in row.reason
    assert fetched(result) == [NAME + ".pgp"]  # the rest of the listing is untouched


def test_oldest_first_and_pure():
    listing = [Entry(f"U1234567.D.202611{d:02d}.202611{d:02d}.xml.pgp", 10, NOW - d * DAY) for d in (3, 9, 5)]
    keys = inv((SKEY, 30))
    before = (copy.deepcopy(listing), copy.deepcopy(keys))
    first, second = plan(listing, keys, rules(), NOW), plan(listing, keys, rules(), NOW)
    assert fetched(first) == [listing[1].name, listing[2].name, listing[0].name]
    assert first == second and (listing, keys) == before


def test_conflict_key_never_names_the_statement():
    st = parse(NAME, 0)
    key = conflict_key("src", st, "f" * 64)
    assert key.startswith("conflicts/src/2026/11/") and key != SKEY and key.endswith("." + "f" * 16)
