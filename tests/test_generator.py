"""The generator: valid, deterministic, LANL-like traffic with learnable red-team campaigns."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cyberstream.cli import main as cli_main
from cyberstream.schema import HEADER, parse_row
from producer.generator import (
    BENIGN_SHARES,
    BURST_KINDS,
    DAY,
    FIRST_ATTACKER_HOST,
    HARD_EARLY_STYLES,
    MACHINE_HOURS,
    MACHINE_WEEKEND_FACTOR,
    STEALTHY_NEW_DESTS_PER_HOUR,
    USER_HOURS,
    USER_WEEKEND_FACTOR,
    GeneratorConfig,
    generate,
)

CFG = GeneratorConfig(days=10, events_per_day=10_000, seed=11, campaigns=3, campaign_intensity=110)


def _read(path: Path) -> pd.DataFrame:
    """The generated CSV as strings, with ``secs`` as integers and its ``day`` and ``hour``."""
    df = pd.read_csv(path, keep_default_na=False, dtype=str)
    df["secs"] = df["secs"].astype(np.int64)
    df["day"] = df["secs"] // DAY
    df["hour"] = df["secs"] % DAY // 3600
    return df


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    path = tmp_path_factory.mktemp("gen") / "ten_days.csv"
    summary = generate(CFG, path)
    return path, summary, _read(path)


def _small(tmp_path: Path, name: str, seed: int) -> bytes:
    path = tmp_path / name
    generate(
        GeneratorConfig(days=3, events_per_day=3000, seed=seed, campaigns=2, campaign_intensity=40), path
    )
    return path.read_bytes()


#: sha256 of ``_small(tmp_path, ..., seed=5)`` as main's generator wrote it before the hard
#: scenario was added (commit 6eccf5f). The default scenario's bytes must not move: trained
#: models, benchmarks and reports refer to the default files. Change it only on purpose, and
#: say in the commit what changed in the default file.
DEFAULT_SMALL_SHA256 = "6292acabf005f38a41287390247498ff6644f7ce3805c74741c88a0917c064bd"


def test_the_default_scenario_writes_the_same_bytes_as_before_the_hard_scenario(tmp_path):
    assert hashlib.sha256(_small(tmp_path, "d.csv", 5)).hexdigest() == DEFAULT_SMALL_SHA256


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
     ({"campaign_intensity": 0}, "intensity"), ({"seed": -1}, "seed"), ({"scenario": "easy"}, "scenario"),
     ({"scenario": "hard", "days": 4}, "at least 5 days")],
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


# --------------------------------------------------------------------------------------
# The hard scenario
# --------------------------------------------------------------------------------------
HARD = GeneratorConfig(days=10, events_per_day=10_000, seed=11, campaigns=3, scenario="hard")
JUDGED = (HARD.days - 2) * DAY  # the last two days start here


@pytest.fixture(scope="module")
def hard(tmp_path_factory):
    path = tmp_path_factory.mktemp("hard") / "hard.csv"
    summary = generate(HARD, path)
    df = _read(path)
    df["edge"] = df.src_name + "|" + df.src_host + "|" + df.dest_host
    df["first_edge"] = ~df.edge.duplicated()
    return path, summary, df


def _campaign(summary, style):
    (c,) = [c for c in summary.campaigns if c.style == style]
    return c


def _malicious_of(df, c):
    return df[(df.label == "A") & df.src_name.isin(c.users) & (df.src_host == c.attacker_host)]


def test_hard_file_is_valid_sorted_and_a_is_only_on_campaign_logons(hard):
    path, summary, df = hard
    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        assert ",".join(next(reader)) == HEADER
        labels = [parse_row(fields, i)[1] for i, fields in enumerate(reader)]
    assert sum(labels) == summary.malicious_rows == sum(c.malicious_rows for c in summary.campaigns)
    assert (np.diff(df.secs.to_numpy()) >= 0).all() and df.secs.max() < HARD.days * DAY
    assert sum(len(_malicious_of(df, c)) for c in summary.campaigns) == (df.label == "A").sum()
    mal = df[df.label == "A"]
    assert (
        set(mal.stage) == {"LogOn"}
        and set(mal.result) == {"Success"}
        and (mal.src_name == mal.dest_name).all()
    )


def test_hard_has_small_campaigns_before_the_last_two_days_and_a_larger_stealthy_one_in_them(hard):
    _, summary, df = hard
    styles = [c.style for c in summary.campaigns]
    assert styles == [*HARD_EARLY_STYLES, "stealthy"]
    assert summary.campaigns[0].attacker_host == f"C{FIRST_ATTACKER_HOST}"
    late = _campaign(summary, "stealthy")
    for c in summary.campaigns:
        rows = _malicious_of(df, c)
        assert len(rows) == c.malicious_rows
        assert rows.secs.min() == c.first_malicious_secs
        assert set(rows.src_name) == set(c.users) and len(c.users) >= 3
        if c is late:
            assert rows.secs.min() >= JUDGED
        else:
            assert rows.secs.max() < JUDGED and rows.secs.min() >= DAY
            assert 2 * c.malicious_rows < late.malicious_rows
    # the summary names the styles
    text = "\n".join(summary.lines())
    assert all(f"{c.style}: attacker {c.attacker_host}" in text for c in summary.campaigns)


def test_stealthy_campaign_is_kerberos_from_a_shared_workstation_reusing_edges_with_few_new_destinations(
    hard,
):
    _, summary, df = hard
    c = _campaign(summary, "stealthy")
    rows = _malicious_of(df, c)
    assert (rows.auth_type == "Kerberos").mean() > 0.8
    # few destinations new to the campaign in any clock hour
    firsts = rows.drop_duplicates("dest_host")
    assert (firsts.secs // 3600).value_counts().max() <= STEALTHY_NEW_DESTS_PER_HOUR
    assert rows.dest_host.nunique() >= 10
    # the attacker host is a workstation the accounts used, clean, before the campaign
    before = df[(df.secs < c.first_malicious_secs) & (df.label == "N")]
    used_it = before[before.src_host == c.attacker_host].src_name
    assert set(c.users) <= set(used_it)
    # more than half go to destinations the account reached before; most reuse an edge already seen
    seen_user_dest = set(before.src_name + "|" + before.dest_host)
    assert (rows.src_name + "|" + rows.dest_host).isin(seen_user_dest).mean() > 0.5
    assert (~rows.first_edge).mean() > 0.6
    # no failed credential checks: failures from the host stay at the benign rate (about 1 %)
    during = df[(df.src_host == c.attacker_host) & (df.secs >= c.first_malicious_secs)]
    assert len(during) > c.malicious_rows and (during.result == "Fail").mean() < 0.03
    # the accounts keep their clean traffic from their own workstations
    clean_elsewhere = df[df.src_name.isin(c.users) & (df.label == "N") & (df.src_host != c.attacker_host)]
    assert clean_elsewhere.groupby("src_name").day.nunique().min() >= 2


def test_slow_campaign_spreads_over_days_at_a_low_rate(hard):
    _, summary, df = hard
    c = _campaign(summary, "slow")
    rows = _malicious_of(df, c)
    assert rows.day.nunique() >= 2 and rows.secs.max() - rows.secs.min() >= DAY
    assert (rows.secs // 3600).value_counts().max() <= 2
    assert rows.groupby("day").size().max() <= 20
    assert set(rows.login_type) == {"Network"} and 0.3 < (rows.auth_type == "NTLM").mean() < 0.9


def test_benign_bursts_make_many_first_time_edges_labelled_n_before_and_in_the_last_two_days(hard):
    _, summary, df = hard
    bursts = summary.benign_bursts
    assert sorted(b.kind for b in bursts) == sorted(BURST_KINDS * 2)
    for kind in BURST_KINDS:
        days = sorted(b.day for b in bursts if b.kind == kind)
        assert days[0] < HARD.days - 2 <= days[1], kind
    minimum_new_edges = {"new_employee": 12, "new_server": 30, "admin_sweep": 30, "new_workstation": 8}
    for b in bursts:
        mine = df[df.src_host.isin(b.hosts) | df.dest_host.isin(b.hosts)]
        if b.kind == "new_employee":  # a new account too
            mine = df[df.src_host.isin(b.hosts) | df.src_name.isin(b.users)]
        assert b.rows >= len(mine) > 0, b  # (logoffs at other hosts are rows of the burst too)
        assert (mine.label == "N").all()
        assert mine.secs.min() >= b.day * DAY - 1800  # new hosts (and account): nothing of them before
        that_day = mine[mine.day == b.day]
        assert that_day.first_edge.sum() >= minimum_new_edges[b.kind], b
        assert set(b.users) <= set(that_day.src_name)


def test_novelty_alone_is_no_answer_in_the_hard_scenario(hard):
    """The unseen (user, source, destination) rule on the last two days: it misses most of
    the stealthy campaign's logons, and the benign bursts add to its false alerts."""
    _, summary, df = hard
    judged = df[df.secs >= JUDGED]
    mal = judged[judged.label == "A"]
    assert mal.first_edge.mean() < 0.5
    burst_hosts = {h for b in summary.benign_bursts if b.day >= HARD.days - 2 for h in b.hosts}
    clean_alerts = judged[judged.first_edge & (judged.label == "N")]
    from_bursts = clean_alerts.src_host.isin(burst_hosts) | clean_alerts.dest_host.isin(burst_hosts)
    assert from_bursts.sum() > 0.1 * len(clean_alerts)


def test_hard_scenario_is_deterministic_and_differs_from_the_default(tmp_path):
    cfg = dict(days=5, events_per_day=2000, seed=3, campaign_intensity=40)
    a, b, d = tmp_path / "a.csv", tmp_path / "b.csv", tmp_path / "d.csv"
    generate(GeneratorConfig(**cfg, scenario="hard"), a)
    generate(GeneratorConfig(**cfg, scenario="hard"), b)
    generate(GeneratorConfig(**cfg), d)
    assert a.read_bytes() == b.read_bytes() != d.read_bytes()


def test_generate_command_takes_a_scenario_and_writes_the_truth(tmp_path, capsys):
    out, truth = tmp_path / "hard.csv", tmp_path / "truth" / "t.json"
    code = cli_main(["generate", "--scenario", "hard", "--days", "5", "--events-per-day", "2000",
                     "--out", str(out), "--truth", str(truth), "--no-progress"])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "scenario hard" in printed and "stealthy: attacker" in printed and "admin_sweep on day" in printed
    t = json.loads(truth.read_text())
    assert [c["style"] for c in t["campaigns"]] == [*HARD_EARLY_STYLES, "stealthy"]
    assert {b["kind"] for b in t["benign_bursts"]} == set(BURST_KINDS)
    malicious = sum(line.endswith(",A") for line in out.read_text().splitlines())
    assert malicious == sum(c["malicious_rows"] for c in t["campaigns"])
    assert (
        cli_main(["generate", "--scenario", "hard", "--days", "4", "--out", str(out), "--no-progress"]) == 2
    )
