"""The generator: valid, deterministic, LANL-like traffic with learnable red-team campaigns."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cyberstream.cli import main as cli_main
from cyberstream.schema import HEADER, parse_row
from producer.generator import (
    BENIGN_SHARES,
    DAY,
    FIRST_ATTACKER_HOST,
    MACHINE_HOURS,
    MACHINE_WEEKEND_FACTOR,
    USER_HOURS,
    USER_WEEKEND_FACTOR,
    GeneratorConfig,
    generate,
)

CFG = GeneratorConfig(days=10, events_per_day=10_000, seed=11, campaigns=3, campaign_intensity=110)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    path = tmp_path_factory.mktemp("gen") / "ten_days.csv"
    summary = generate(CFG, path)
    df = pd.read_csv(path, keep_default_na=False, dtype=str)
    df["secs"] = df["secs"].astype(np.int64)
    df["day"] = df["secs"] // DAY
    df["hour"] = df["secs"] % DAY // 3600
    return path, summary, df


def _small(tmp_path: Path, name: str, seed: int) -> bytes:
    path = tmp_path / name
    generate(
        GeneratorConfig(days=3, events_per_day=3000, seed=seed, campaigns=2, campaign_intensity=40), path
    )
    return path.read_bytes()


def test_same_seed_gives_the_same_bytes_and_another_seed_differs(tmp_path):
    a, b, c = _small(tmp_path, "a.csv", 5), _small(tmp_path, "b.csv", 5), _small(tmp_path, "c.csv", 6)
    assert a == b
    assert a != c
    assert a.count(b"\n") > 8000


def test_every_row_follows_the_schema_and_rows_are_sorted(generated):
    path, summary, _ = generated
    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        assert ",".join(next(reader)) == HEADER
        secs, malicious = [], 0
        for i, fields in enumerate(reader):
            event, label = parse_row(fields, i)
            secs.append(event.secs)
            malicious += label
    assert len(secs) == summary.rows
    assert malicious == summary.malicious_rows
    assert all(a <= b for a, b in zip(secs, secs[1:], strict=False))
    assert secs[0] >= 0 and secs[-1] < CFG.days * DAY


def test_summary_counts_rows_and_connections(generated):
    _, summary, df = generated
    assert summary.rows == len(df)
    assert summary.connections == len(df.groupby(["src_name", "dest_name"]))
    assert (
        summary.malicious_rows == (df.label == "A").sum() == sum(c.malicious_rows for c in summary.campaigns)
    )
    # about events_per_day benign rows per day, plus the campaigns' few hundred
    assert 0.97 * CFG.days * CFG.events_per_day < summary.rows < 1.03 * CFG.days * CFG.events_per_day


def _kind(df: pd.DataFrame) -> pd.Series:
    kind = pd.Series("user", index=df.index)
    kind[df.src_name.str.contains(r"\$@DOM1$") & (df.src_name == df.dest_name)] = "machine"
    kind[df.dest_name.str.match(r"^(SYSTEM|LOCAL SERVICE|NETWORK SERVICE)@")] = "service"
    kind[df.src_name.str.startswith("ANONYMOUS LOGON@")] = "anonymous"
    return kind


def test_shares_of_event_kinds_match_the_configured_shares(generated):
    _, _, df = generated
    share = _kind(df).value_counts(normalize=True)
    expected_user = sum(v for k, v in BENIGN_SHARES.items() if k.startswith(("user", "admin")))
    assert share["machine"] == pytest.approx(BENIGN_SHARES["machine"], abs=0.02)
    assert share["service"] == pytest.approx(BENIGN_SHARES["service"], abs=0.02)
    assert share["anonymous"] == pytest.approx(BENIGN_SHARES["anonymous"], abs=0.01)
    assert share["user"] == pytest.approx(expected_user, abs=0.02)
    # anonymous logons are NTLM network logons (and their logoffs)
    anon = df[_kind(df) == "anonymous"]
    assert set(anon.auth_type) == {"NTLM", "?"} and set(anon.login_type) == {"Network"}


def test_missing_values_are_written_as_question_marks_like_lanl(generated):
    _, _, df = generated
    tgs = df[df.stage == "TGS"]
    assert len(tgs) > 0.05 * len(df)
    assert (tgs.auth_type == "?").all() and (tgs.login_type == "?").all()
    logoff = df[df.stage == "LogOff"]
    assert (logoff.auth_type == "?").mean() > 0.99
    assert (df.src_name != "").all() and (df.src_host != "").all()


def test_about_one_percent_of_rows_fail_and_only_logons_and_tickets_fail(generated):
    _, _, df = generated
    failed = df[df.result == "Fail"]
    assert 0.008 < len(failed) / len(df) < 0.013
    assert set(failed.stage) <= {"LogOn", "TGS", "TGT"}
    assert set(df.result) == {"Success", "Fail"}


def test_people_follow_a_day_night_and_weekday_weekend_rhythm_machines_less(generated):
    _, _, df = generated
    kind = _kind(df)
    people = df[kind == "user"]
    machines = df[kind.isin(["machine", "service"])]

    def day_night(rows):
        per_hour = rows.hour.value_counts()
        return per_hour[list(range(9, 17))].mean() / per_hour[list(range(0, 5))].mean()

    def expected_day_night(hours):
        return hours[9:17].mean() / hours[0:5].mean()

    assert day_night(people) == pytest.approx(expected_day_night(USER_HOURS), rel=0.2)
    assert day_night(people) > 10
    assert day_night(machines) == pytest.approx(expected_day_night(MACHINE_HOURS), rel=0.1)
    assert day_night(machines) < 2.5

    def weekend_ratio(rows):
        per_day = rows.day.value_counts()
        return per_day[[5, 6]].mean() / per_day[[0, 1, 2, 3, 4, 7, 8, 9]].mean()

    assert weekend_ratio(people) == pytest.approx(USER_WEEKEND_FACTOR, abs=0.05)
    assert weekend_ratio(machines) == pytest.approx(MACHINE_WEEKEND_FACTOR, abs=0.05)


def test_activity_is_heavy_tailed_per_account_and_host(generated):
    _, _, df = generated
    users = df[df.src_name.str.match(r"^U\d+@DOM1$")].src_name.value_counts()
    top_tenth = users.iloc[: len(users) // 10].sum() / users.sum()
    assert top_tenth > 0.25  # uniform activity would give about 0.10
    dest_hosts = df.dest_host.value_counts()
    assert dest_hosts.iloc[0] > 50 * dest_hosts.median()  # a few busy servers


def test_users_have_one_or_two_habitual_workstations(generated):
    _, _, df = generated
    own = df[df.src_name.str.match(r"^U\d+@DOM1$") & (df.stage == "TGS") & (df.label == "N")]
    top2 = own.groupby("src_name").src_host.agg(lambda s: s.value_counts().iloc[:2].sum() / len(s))
    assert top2.median() > 0.9


def _campaign_rows(df: pd.DataFrame) -> pd.DataFrame:
    return df[df.label == "A"]


def test_campaigns_have_an_attacker_host_many_users_many_destinations_and_bursts(generated):
    _, summary, df = generated
    mal = _campaign_rows(df)
    assert sorted(mal.src_host.unique()) == sorted(c.attacker_host for c in summary.campaigns)
    assert summary.campaigns[0].attacker_host == f"C{FIRST_ATTACKER_HOST}"
    assert len(summary.campaigns) == CFG.campaigns
    for c in summary.campaigns:
        rows = mal[mal.src_host == c.attacker_host]
        assert len(rows) == c.malicious_rows > 60
        assert rows.src_name.nunique() >= 10
        assert set(rows.src_name) == set(c.users)
        assert rows.dest_host.nunique() >= 30
        assert c.attacker_host not in set(rows.dest_host)
        days = sorted(rows.day.unique())
        assert len(days) >= 3 and days == c.burst_days
        # bursts: each day's malicious rows fall within a few hours
        span = rows.groupby("day").secs.agg(lambda s: s.max() - s.min())
        assert (span <= 3 * 3600).all()
        # mostly NTLM network logons, dest_name is the user itself (as in LANL)
        assert (rows.auth_type == "NTLM").mean() > 0.8
        assert set(rows.login_type) == {"Network"} and set(rows.stage) == {"LogOn"}
        assert (rows.src_name == rows.dest_name).all()
        assert rows.src_name.str.match(r"^U\d+@DOM1$").all()


def test_compromised_users_keep_their_clean_traffic_from_their_own_workstations(generated):
    _, summary, df = generated
    attackers = {c.attacker_host for c in summary.campaigns}
    for user in {u for c in summary.campaigns for u in c.users}:
        clean = df[(df.src_name == user) & (df.label == "N") & ~df.src_host.isin(attackers)]
        assert len(clean) >= 5, user
        assert clean.day.nunique() >= 2, user


def test_label_a_is_only_on_campaign_logons(generated):
    _, summary, df = generated
    attackers = {c.attacker_host for c in summary.campaigns}
    users = df.src_name.str.match(r"^U\d+@DOM1$")
    # every successful user logon from an attacker host to another host is a campaign logon: A
    lateral = df[users & df.src_host.isin(attackers) & (df.dest_host != df.src_host)
                 & (df.stage == "LogOn") & (df.result == "Success")]  # fmt: skip
    assert (lateral.label == "A").all()
    # and nothing else is A
    assert (df.label == "A").sum() == len(lateral)
    assert set(df.label) == {"N", "A"}


def test_each_run_of_malicious_logons_is_preceded_by_unlabelled_traces_from_the_attacker(generated):
    """The signal a detector can use before the labelled events of a connection."""
    _, summary, df = generated
    attackers = {c.attacker_host for c in summary.campaigns}
    mal = _campaign_rows(df)
    firsts = mal.groupby(["src_name", "day"]).secs.min()
    for (user, _day), first in firsts.items():
        before = df[
            (df.src_name == user) & (df.dest_name == user) & (df.secs <= first) & (df.secs >= first - 7200)
        ]
        traces = before[before.src_host.isin(attackers) & (before.label == "N")]
        assert len(traces) >= 1, (user, first)
    # some probes hit users the campaign never uses (unlabelled decoys)
    probed = set(df[df.src_host.isin(attackers) & df.src_name.str.match(r"^U\d+@DOM1$")].src_name)
    assert probed - set(mal.src_name)
    # destinations log the sessions off afterwards, unlabelled
    logoffs = df[(df.stage == "LogOff") & df.src_name.isin(set(mal.src_name))]
    hits = mal.merge(
        logoffs, left_on=["src_name", "dest_host"], right_on=["src_name", "src_host"], suffixes=("", "_off")
    )
    hits = hits[(hits.secs_off >= hits.secs) & (hits.secs_off <= hits.secs + 61)]
    assert hits.drop_duplicates(["src_name", "secs", "dest_host"]).shape[0] > 0.6 * len(mal)


def test_more_campaigns_and_intensity_give_more_malicious_rows(tmp_path):
    low = generate(
        GeneratorConfig(days=4, events_per_day=2000, campaigns=1, campaign_intensity=30), tmp_path / "l.csv"
    )
    high = generate(
        GeneratorConfig(days=4, events_per_day=2000, campaigns=4, campaign_intensity=90), tmp_path / "h.csv"
    )
    none = generate(GeneratorConfig(days=4, events_per_day=2000, campaigns=0), tmp_path / "n.csv")
    assert len(low.campaigns) == 1 and len(high.campaigns) == 4
    assert 15 < low.malicious_rows < 50
    assert 280 < high.malicious_rows < 450
    assert none.malicious_rows == 0 and "A" not in {
        line[-1] for line in (tmp_path / "n.csv").read_text().splitlines()
    }


@pytest.mark.parametrize(
    "kwargs, message",
    [({"days": 0}, "days"), ({"events_per_day": 10}, "events per day"), ({"campaigns": -1}, "campaigns"),
     ({"campaign_intensity": 0}, "intensity"), ({"seed": -1}, "seed")],
)  # fmt: skip
def test_bad_settings_are_rejected_with_a_reason(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GeneratorConfig(**kwargs)


def test_generate_command_writes_the_file_and_prints_a_summary(tmp_path, capsys):
    out = tmp_path / "sub" / "data.csv"
    code = cli_main(["generate", "--days", "2", "--events-per-day", "1500", "--seed", "3", "--campaigns", "1",
                     "--campaign-intensity", "20", "--out", str(out), "--no-progress"])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    lines = out.read_text().splitlines()
    assert lines[0] == HEADER
    assert f"rows            {len(lines) - 1:,}" in printed
    assert "malicious rows" in printed and "connections" in printed and "attacker C17693" in printed
    assert cli_main(["generate", "--days", "0", "--out", str(out), "--no-progress"]) == 2
