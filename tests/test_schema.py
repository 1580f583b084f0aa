"""Strict parsing of CyberFLTenDays rows and of event-topic messages."""

from __future__ import annotations

import json

import pytest

from cyberstream.schema import (
    COLUMNS,
    HEADER,
    Event,
    SchemaError,
    decode_event,
    parse_row,
)

# rows from METHOD.md (LANL's own format)
GOOD_ROWS = [
    "2,C297$@DOM1,SYSTEM@C297,C297,C297,Negotiate,Service,LogOn,Success,N",
    "21,C4589$@DOM1,C4589$@DOM1,C4589,C625,?,?,TGS,Success,N",
    "25,U175@DOM1,U175@DOM1,C1085,C1085,?,?,TGS,Success,N",
    "67,C2716$@DOM1,C2716$@DOM1,C529,C529,?,Network,LogOff,Success,N",
    "150885,U620@DOM1,U620@DOM1,C17693,C1003,NTLM,Network,LogOn,Success,A",
]


def test_header_lists_the_ten_columns_in_order():
    assert HEADER == "secs,src_name,dest_name,src_host,dest_host,auth_type,login_type,stage,result,label"
    assert len(COLUMNS) == 10


def test_good_rows_parse_to_events_with_their_log_id():
    event, malicious = parse_row(GOOD_ROWS[0].split(","), 0)
    assert event == Event(
        0, 2, "C297$@DOM1", "SYSTEM@C297", "C297", "C297", "Negotiate", "Service", "LogOn", "Success"
    )
    assert malicious is False
    event, malicious = parse_row(GOOD_ROWS[4].split(","), 41)
    assert (event.log_id, event.secs, event.src_host, event.dest_host, event.auth_type) == (
        41, 150885, "C17693", "C1003", "NTLM",
    )  # fmt: skip
    assert malicious is True


def test_question_mark_attribute_is_missing_but_identity_question_mark_is_kept():
    event, _ = parse_row(GOOD_ROWS[1].split(","), 1)
    assert event.auth_type is None and event.login_type is None
    assert event.stage == "TGS" and event.result == "Success"
    event, _ = parse_row("5,?,U1@DOM1,?,C2,?,Network,LogOff,?,N".split(","), 2)
    assert event.src_name == "?" and event.src_host == "?"
    assert event.result is None
    # missing attributes travel as JSON null
    assert json.loads(event.to_json())["auth_type"] is None


def test_surrounding_whitespace_is_stripped():
    event, malicious = parse_row(
        " 7 , U1@DOM1,U1@DOM1 ,C1,C2, Kerberos ,Network,LogOn,Success, A".split(","), 3
    )
    assert (event.secs, event.src_name, event.dest_name, event.auth_type, malicious) == (
        7, "U1@DOM1", "U1@DOM1", "Kerberos", True,
    )  # fmt: skip


def _fields(**changes: str) -> list[str]:
    row = dict(zip(COLUMNS, GOOD_ROWS[2].split(","), strict=True))
    row.update(changes)
    return [row[c] for c in COLUMNS]


@pytest.mark.parametrize("n", [1, 9, 11])
def test_wrong_column_count_is_rejected(n):
    fields = (GOOD_ROWS[2].split(",") + ["extra"] * 5)[:n]
    with pytest.raises(SchemaError) as exc:
        parse_row(fields, 0)
    assert f"got {n}" in exc.value.reason and "expected 10 columns" in exc.value.reason


@pytest.mark.parametrize("secs", ["1.5", "abc", "", "1e3", "0x10", "١٢"])
def test_non_integer_secs_is_rejected(secs):
    with pytest.raises(SchemaError) as exc:
        parse_row(_fields(secs=secs), 0)
    assert "secs must be a non-negative integer" in exc.value.reason
    assert repr(secs) in exc.value.reason


def test_negative_secs_is_rejected():
    with pytest.raises(SchemaError) as exc:
        parse_row(_fields(secs="-3"), 0)
    assert "'-3'" in exc.value.reason


@pytest.mark.parametrize("field", ["src_name", "dest_name", "src_host", "dest_host"])
@pytest.mark.parametrize("value", ["", "  "])
def test_empty_name_or_host_is_rejected(field, value):
    with pytest.raises(SchemaError) as exc:
        parse_row(_fields(**{field: value}), 0)
    assert exc.value.reason == f"{field} is empty"


@pytest.mark.parametrize("label", ["", "X", "n", "a", "0", "1", "malicious", "?"])
def test_unknown_label_is_rejected(label):
    with pytest.raises(SchemaError) as exc:
        parse_row(_fields(label=label), 0)
    assert "label must be one of ['A', 'N']" in exc.value.reason


def test_event_json_round_trip():
    event, _ = parse_row(GOOD_ROWS[1].split(","), 99)
    assert decode_event(event.to_json()) == event


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b"not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"log_id": 1}', "lacks field"),
    ],
)
def test_malformed_event_messages_are_rejected(raw, reason):
    with pytest.raises(SchemaError) as exc:
        decode_event(raw)
    assert reason in exc.value.reason


@pytest.mark.parametrize(
    "field, value",
    [("log_id", -1), ("secs", "12"), ("secs", True), ("src_host", ""), ("auth_type", 3)],
)
def test_event_messages_with_bad_field_types_are_rejected(field, value):
    event, _ = parse_row(GOOD_ROWS[1].split(","), 5)
    obj = event.to_dict()
    obj[field] = value
    with pytest.raises(SchemaError) as exc:
        decode_event(json.dumps(obj).encode())
    assert field in exc.value.reason


def test_a_row_that_is_not_utf8_is_rejected_with_its_reason():
    from cyberstream.schema import SchemaError, parse_row

    raw = b"5,U1@DOM1,U1@DOM1,C1,C\xff2,NTLM,Network,LogOn,Success,N".decode("utf-8", "surrogateescape")
    with pytest.raises(SchemaError, match="not valid UTF-8"):
        parse_row(raw.split(","), 0)


def test_training_reader_counts_a_non_utf8_row_instead_of_crashing(tmp_path):
    from training.data import read_events

    path = tmp_path / "bad.csv"
    path.write_bytes(
        b"secs,src_name,dest_name,src_host,dest_host,auth_type,login_type,stage,result,label\n"
        b"1,U1@DOM1,U1@DOM1,C1,C2,NTLM,Network,LogOn,Success,N\n"
        b"2,U1@DOM1,U1@DOM1,C1,C\xff2,NTLM,Network,LogOn,Success,N\n"
    )
    events, report = read_events(path, progress=False)
    assert len(events) == 1 and report.rejected == 1
    assert "not valid UTF-8" in next(iter(report.reasons))
