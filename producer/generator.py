"""LANL-like authentication traffic with red-team campaigns, generated fast and deterministically.

The output is a CyberFLTenDays CSV (see :mod:`cyberstream.schema`), sorted by ``secs``.

Benign traffic is built from *activities* (a short sequence of rows, e.g. a user's
Kerberos ticket request, network logon at a server and the server's logoff), drawn per day
with a day/night and weekday/weekend rhythm and heavy-tailed activity per account and host:

* computer accounts (``C123$@DOM1``) talking Kerberos to a few busy servers;
* service logons on the host itself (``C123$@DOM1 -> SYSTEM@C123``, ``LOCAL SERVICE@C123``...);
* users (``U123@DOM1``) with one or two habitual workstations and a few habitual servers,
  some of them on legacy NTLM, some occasionally roaming to another workstation;
* ``ANONYMOUS LOGON`` NTLM network logons to servers;
* a few administrators fanning out to many workstations from an admin host.

Red-team campaigns follow LANL's (one attacker host, many compromised user accounts,
mostly NTLM network logons, many destinations, bursts on several days). A malicious row is
``user / user`` from the attacker host to a destination (as in LANL, ``dest_name`` is the
user itself), so it lands on the same connection as the user's ordinary clean traffic.
Only those logons are labelled ``A``. Around them the campaign leaves unlabelled traces a
detector can use, as LANL's red team did: a few credential checks from the attacker host
before a user's run of logons (failed NTLM logons, a logon to the attacker host itself),
and the destinations' logoffs after. Probes of users that are never used are unlabelled.

``scenario="hard"`` (:data:`SCENARIOS`) makes novelty alone no answer: small ``burst`` and
``slow`` campaigns before the last two days, a larger ``stealthy`` one in them that reuses
edges already seen, and benign novelty bursts (new employee, new server, an administrator's
sweep, new workstations) before and in them. It draws from streams of its own, so the
default scenario's bytes do not depend on it.

Everything is drawn from ``numpy.random.SeedSequence(seed)``: the same seed and settings
give the same bytes. Day ``d`` has its own random stream, so memory stays bounded by one
day of rows however many days are asked for.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from cyberstream.schema import HEADER, LABEL_CLEAN, LABEL_MALICIOUS

log = logging.getLogger(__name__)

DAY = 86_400
#: Day 0 is a Monday: days with ``d % 7`` in WEEKEND are Saturday and Sunday.
WEEKEND = (5, 6)

# --------------------------------------------------------------------------------------
# Attribute combinations (auth_type, login_type, stage, result) used by the generator.
# "?" is LANL's missing-value marker, written as is.
# --------------------------------------------------------------------------------------
_COMBOS: list[tuple[str, str, str]] = [
    ("?", "?", "TGS"),
    ("Kerberos", "Network", "LogOn"),
    ("?", "Network", "LogOff"),
    ("Kerberos", "?", "TGT"),
    ("Negotiate", "Service", "LogOn"),
    ("NTLM", "Network", "LogOn"),
    ("Negotiate", "Interactive", "LogOn"),
    ("Kerberos", "Interactive", "LogOn"),
    ("Negotiate", "Unlock", "LogOn"),
    ("Kerberos", "RemoteInteractive", "LogOn"),
    ("Negotiate", "CachedInteractive", "LogOn"),
    ("MICROSOFT_AUTHENTICATION_PACKAGE_V1_0", "Network", "LogOn"),
    ("Negotiate", "Batch", "LogOn"),
    ("?", "?", "ScreenLock"),
    ("?", "?", "ScreenUnlock"),
    ("Negotiate", "NewCredentials", "LogOn"),
    ("Kerberos", "Network", "LogOff"),
]
#: Every combination exists with result Success (code c) and Fail (code c + len(_COMBOS)).
ATTRIBUTES: list[tuple[str, str, str, str]] = [(*c, "Success") for c in _COMBOS] + [
    (*c, "Fail") for c in _COMBOS
]
_C = {c: i for i, c in enumerate(_COMBOS)}
TGS, KRB_LOGON, LOGOFF, TGT = (
    _C["?", "?", "TGS"],
    _C["Kerberos", "Network", "LogOn"],
    _C["?", "Network", "LogOff"],
    _C["Kerberos", "?", "TGT"],
)
SERVICE, NTLM_LOGON = _C["Negotiate", "Service", "LogOn"], _C["NTLM", "Network", "LogOn"]
INTERACTIVE = [
    _C[c]
    for c in [
        ("Negotiate", "Interactive", "LogOn"),
        ("Kerberos", "Interactive", "LogOn"),
        ("Negotiate", "Unlock", "LogOn"),
        ("Kerberos", "RemoteInteractive", "LogOn"),
        ("Negotiate", "CachedInteractive", "LogOn"),
        ("MICROSOFT_AUTHENTICATION_PACKAGE_V1_0", "Network", "LogOn"),
        ("Negotiate", "NewCredentials", "LogOn"),
    ]
]
INTERACTIVE_P = [0.42, 0.25, 0.18, 0.05, 0.04, 0.04, 0.02]
BATCH, SCREEN_LOCK, SCREEN_UNLOCK = (
    _C["Negotiate", "Batch", "LogOn"],
    _C["?", "?", "ScreenLock"],
    _C["?", "?", "ScreenUnlock"],
)
FAIL = len(_COMBOS)
#: Rows of these stages can fail (LANL's failures are logons and ticket requests).
_FAILABLE = np.array([c[2] in ("LogOn", "TGS", "TGT") for c in _COMBOS] + [False] * len(_COMBOS))
#: Share of all rows that fail (LANL: about 1 %).
FAILURE_RATE = 0.01

# --------------------------------------------------------------------------------------
# Rhythm: relative activity per hour of day; machines follow it only mildly.
# --------------------------------------------------------------------------------------
USER_HOURS = np.array(
    [0.05, 0.04, 0.03, 0.03, 0.04, 0.08, 0.2, 0.5, 0.9, 1.0, 1.0, 0.95,
     0.8, 0.95, 1.0, 1.0, 0.95, 0.8, 0.5, 0.3, 0.2, 0.15, 0.1, 0.07]
)  # fmt: skip
MACHINE_HOURS = 0.6 + 0.4 * USER_HOURS
USER_WEEKEND_FACTOR = 0.3
MACHINE_WEEKEND_FACTOR = 0.85

#: Benign activity kinds and their share of benign rows. Tests check these shares.
BENIGN_SHARES: dict[str, float] = {
    "machine": 0.36,  # C123$@DOM1 Kerberos to servers
    "service": 0.14,  # C123$@DOM1 -> SYSTEM@C123 and local service accounts on the host
    "user_server": 0.30,  # users to their habitual servers
    "user_interactive": 0.10,  # users on their workstations
    "anonymous": 0.05,  # ANONYMOUS LOGON NTLM to servers
    "user_roaming": 0.025,  # users from someone else's workstation
    "admin_fanout": 0.025,  # administrators to many workstations
}
#: Kinds driven by people (strong day/night and weekend rhythm); the rest are machines.
USER_DRIVEN = frozenset({"user_server", "user_interactive", "user_roaming", "admin_fanout"})

#: LANL's busiest servers; used as server ids so the data looks familiar.
WELL_KNOWN_SERVERS = [625, 586, 529, 467, 457, 1065, 612, 528, 2106, 754, 585, 1085, 101, 553, 988, 1877,
                      231, 3034, 2327, 61, 1016, 2516, 743, 1581, 3173, 1766, 395, 1618, 1484, 5693]  # fmt: skip
#: LANL's red team worked almost entirely from C17693; the first campaign uses it.
FIRST_ATTACKER_HOST = 17693

#: ``default``: LANL-like burst campaigns on random days (the demo's file; its bytes are kept
#: stable). ``hard``: small burst and slow campaigns before the last two days, a larger
#: stealthy one in them, and benign novelty bursts throughout (see :func:`plan_hard_campaigns`
#: and :func:`plan_benign_bursts`).
SCENARIOS = ("default", "hard")
#: Campaign styles: ``burst`` (LANL's: NTLM fan-out in bursts of hours), ``slow`` (a few
#: logons a day over several days), ``stealthy`` (Kerberos from a compromised shared
#: workstation, mostly to the accounts' own servers, few new destinations an hour).
STYLES = ("burst", "slow", "stealthy")
#: The hard scenario needs two days before its judged last two days, and day 0 clean.
HARD_MIN_DAYS = 5
#: The hard scenario's campaigns before the last two days take these styles in turn.
HARD_EARLY_STYLES = ("burst", "slow")
#: Sizes of the hard scenario's campaigns, as a multiple of ``campaign_intensity``.
HARD_SMALL, HARD_LARGE = 0.3, 1.5
#: A stealthy campaign reaches at most this many destinations new to it in a clock hour.
STEALTHY_NEW_DESTS_PER_HOUR = 2
#: Benign novelty bursts of the hard scenario (each once before the last two days, once in them).
BURST_KINDS = ("new_employee", "new_server", "admin_sweep", "new_workstation")


@dataclass(frozen=True)
class GeneratorConfig:
    """What to generate. ``events_per_day`` is the mean number of benign rows per day."""

    days: int = 10
    events_per_day: int = 25_000
    seed: int = 7
    campaigns: int = 3
    #: mean number of malicious (``A``) rows per campaign
    campaign_intensity: float = 110.0
    #: one of SCENARIOS
    scenario: str = "default"

    def __post_init__(self) -> None:
        if self.days < 1:
            raise ValueError(f"days must be at least 1, got {self.days}")
        if self.events_per_day < 100:
            raise ValueError(f"events per day must be at least 100, got {self.events_per_day}")
        if self.campaigns < 0:
            raise ValueError(f"campaigns must be >= 0, got {self.campaigns}")
        if self.campaigns and self.campaign_intensity < 1:
            raise ValueError(f"campaign intensity must be >= 1, got {self.campaign_intensity}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.scenario not in SCENARIOS:
            raise ValueError(f"scenario must be one of {', '.join(SCENARIOS)}, got {self.scenario!r}")
        if self.scenario == "hard" and self.days < HARD_MIN_DAYS:
            raise ValueError(
                f"the hard scenario needs at least {HARD_MIN_DAYS} days (small campaigns before "
                f"the last two days, a larger one in them), got {self.days}"
            )


# --------------------------------------------------------------------------------------
# The world: accounts, hosts and their habits.
# --------------------------------------------------------------------------------------
@dataclass
class World:
    """Accounts and hosts. Identity values are codes into ``vocab``."""

    vocab: list[str]
    host: np.ndarray  # host index -> code of "C123"
    machine: np.ndarray  # host index -> code of "C123$@DOM1"
    system: np.ndarray  # "SYSTEM@C123"
    local_service: np.ndarray
    network_service: np.ndarray
    anonymous: np.ndarray  # "ANONYMOUS LOGON@C123"
    user: np.ndarray  # user index -> code of "U123@DOM1"
    workstations: np.ndarray  # host indexes
    servers: np.ndarray  # host indexes; the first ``n_dc`` are domain controllers
    n_dc: int
    attackers: np.ndarray  # host indexes reserved for campaigns (also have machine traffic)
    user_ws: np.ndarray  # (users, 2) host indexes; column 1 == column 0 without a second one
    user_servers: np.ndarray  # (users, 3) host indexes of habitual servers
    user_weight: np.ndarray  # activity weights (sum 1)
    ntlm_user: np.ndarray  # bool: legacy NTLM users
    admins: np.ndarray  # user indexes
    admin_hosts: np.ndarray  # host index per admin
    ws_weight: np.ndarray  # over ``workstations`` (plus attackers at the end)
    server_weight: np.ndarray

    @property
    def dcs(self) -> np.ndarray:
        return self.servers[: self.n_dc]


def _lognormal_weights(rng: np.random.Generator, n: int, sigma: float) -> np.ndarray:
    w = rng.lognormal(0.0, sigma, n)
    return w / w.sum()


def build_world(cfg: GeneratorConfig, rng: np.random.Generator) -> World:
    """Accounts and hosts sized to the traffic volume (about 50 benign rows per user per day)."""
    n_users = int(np.clip(round(cfg.events_per_day / 50), 60, 50_000))
    n_ws = round(n_users * 1.15)
    n_servers = int(np.clip(round(n_users / 25), 8, 1000))
    n_dc = max(2, n_servers // 8)
    n_attackers = max(cfg.campaigns, 1)

    id_space = max(27_000, 2 * (n_ws + n_servers + n_attackers))
    reserved = set(WELL_KNOWN_SERVERS) | {FIRST_ATTACKER_HOST}
    free = np.setdiff1d(np.arange(1, id_space), np.fromiter(reserved, int))
    server_ids = WELL_KNOWN_SERVERS[:n_servers]
    n_extra_servers = n_servers - len(server_ids)
    drawn = rng.choice(free, size=n_extra_servers + n_ws + n_attackers - 1, replace=False)
    server_ids = np.array(server_ids + list(drawn[:n_extra_servers]), dtype=np.int64)
    ws_ids = drawn[n_extra_servers : n_extra_servers + n_ws]
    attacker_ids = np.concatenate([[FIRST_ATTACKER_HOST], drawn[n_extra_servers + n_ws :]]).astype(np.int64)
    host_ids = np.concatenate([server_ids, ws_ids, attacker_ids])
    n_hosts = len(host_ids)

    user_ids = rng.choice(np.arange(1, max(13_000, 3 * n_users)), size=n_users, replace=False)
    hosts = [f"C{i}" for i in host_ids]
    vocab = (
        hosts
        + [f"{h}$@DOM1" for h in hosts]
        + [f"SYSTEM@{h}" for h in hosts]
        + [f"LOCAL SERVICE@{h}" for h in hosts]
        + [f"NETWORK SERVICE@{h}" for h in hosts]
        + [f"ANONYMOUS LOGON@{h}" for h in hosts]
        + [f"U{i}@DOM1" for i in user_ids]
    )
    base = np.arange(n_hosts, dtype=np.int32)

    servers = np.arange(n_servers)
    workstations = np.arange(n_servers, n_servers + n_ws)
    attackers = np.arange(n_servers + n_ws, n_hosts)

    # Users get their own primary workstation where possible; 30 % have a second one.
    primary = workstations[rng.permutation(n_users) % n_ws]
    second = np.where(rng.random(n_users) < 0.3, rng.choice(workstations, n_users), primary)
    server_weight = 1.0 / np.arange(1, n_servers + 1) ** 1.1
    server_weight /= server_weight.sum()
    file_servers = servers[n_dc:]
    fs_w = server_weight[n_dc:] / server_weight[n_dc:].sum()
    user_servers = rng.choice(file_servers, size=(n_users, 3), p=fs_w)
    admins = rng.choice(n_users, size=max(2, n_users // 150), replace=False)
    admin_hosts = rng.choice(workstations, size=len(admins), replace=False)
    ntlm_user = rng.random(n_users) < 0.08
    ntlm_user[admins] = False
    all_ws = np.concatenate([workstations, attackers])
    return World(
        vocab=vocab,
        host=base,
        machine=base + n_hosts,
        system=base + 2 * n_hosts,
        local_service=base + 3 * n_hosts,
        network_service=base + 4 * n_hosts,
        anonymous=base + 5 * n_hosts,
        user=np.arange(n_users, dtype=np.int32) + 6 * n_hosts,
        workstations=workstations,
        servers=servers,
        n_dc=n_dc,
        attackers=attackers,
        user_ws=np.stack([primary, second], axis=1),
        user_servers=user_servers,
        user_weight=_lognormal_weights(rng, n_users, 1.0),
        ntlm_user=ntlm_user,
        admins=admins,
        admin_hosts=admin_hosts,
        ws_weight=_lognormal_weights(rng, len(all_ws), 0.8),
        server_weight=server_weight,
    )


# --------------------------------------------------------------------------------------
# Rows: columns of codes, concatenated per day, then formatted once.
# --------------------------------------------------------------------------------------
@dataclass
class Rows:
    """A block of rows as columns of codes (identity codes into ``World.vocab``)."""

    secs: np.ndarray
    src_name: np.ndarray
    dest_name: np.ndarray
    src_host: np.ndarray
    dest_host: np.ndarray
    attrs: np.ndarray  # index into ATTRIBUTES
    label: np.ndarray  # bool, True = malicious

    FIELDS = ("secs", "src_name", "dest_name", "src_host", "dest_host", "attrs", "label")

    @classmethod
    def make(cls, secs, src_name, dest_name, src_host, dest_host, attrs, label=False) -> Rows:
        secs = np.asarray(secs, dtype=np.int64)
        n = len(secs)

        def col(v, dtype):
            return np.broadcast_to(np.asarray(v, dtype=dtype), (n,)).copy()

        return cls(
            secs,
            col(src_name, np.int32),
            col(dest_name, np.int32),
            col(src_host, np.int32),
            col(dest_host, np.int32),
            col(attrs, np.int16),
            col(label, bool),
        )

    @classmethod
    def concat(cls, blocks: list[Rows]) -> Rows:
        return cls(*(np.concatenate([getattr(b, f) for b in blocks]) for f in cls.FIELDS))

    def take(self, idx) -> Rows:
        return Rows(*(getattr(self, f)[idx] for f in self.FIELDS))

    def __len__(self) -> int:
        return len(self.secs)


def _activity_starts(rng: np.random.Generator, n: int, day: int, hours: np.ndarray) -> np.ndarray:
    hour = rng.choice(24, size=n, p=hours / hours.sum())
    return day * DAY + hour * 3600 + rng.integers(0, 3600, size=n)


def _pick(rng: np.random.Generator, options: np.ndarray, n: int, p: np.ndarray | None = None) -> np.ndarray:
    return options[rng.choice(len(options), size=n, p=p)]


def _steps(t0: np.ndarray, steps: list[tuple]) -> list[Rows]:
    """Expand activities into rows. Each step: (offset, src_name, dest_name, src_host, dest_host,
    attrs[, keep mask]); later steps come later in the output for equal ``secs``."""
    out = []
    for step in steps:
        offset, sn, dn, sh, dh, attrs, *keep = step
        rows = Rows.make(t0 + offset, sn, dn, sh, dh, attrs)
        out.append(rows.take(keep[0]) if keep else rows)
    return out


def _logoff_delay(rng: np.random.Generator, n: int) -> np.ndarray:
    return 1 + rng.exponential(40.0, n).astype(np.int64)


def _machine(rng, w: World, n, day) -> list[Rows]:
    all_ws = np.concatenate([w.workstations, w.attackers])
    h = _pick(rng, all_ws, n, w.ws_weight)
    srv = _pick(rng, w.servers, n, w.server_weight)
    dc = _pick(rng, w.dcs, n)
    acct = w.machine[h]
    t0 = _activity_starts(rng, n, day, MACHINE_HOURS)
    logon = rng.integers(0, 2, n)
    return _steps(
        t0,
        [
            (0, acct, acct, w.host[h], w.host[dc], TGS, rng.random(n) < 0.6),
            (logon, acct, acct, w.host[h], w.host[srv], KRB_LOGON),
            (logon + _logoff_delay(rng, n), acct, acct, w.host[srv], w.host[srv], LOGOFF),
        ],
    )


def _service(rng, w: World, n, day) -> list[Rows]:
    all_hosts = np.concatenate([w.servers, w.workstations, w.attackers])
    weight = np.concatenate([w.server_weight * len(w.servers) * 3, w.ws_weight * len(w.ws_weight)])
    h = _pick(rng, all_hosts, n, weight / weight.sum())
    kind = rng.choice(3, size=n, p=[0.8, 0.1, 0.1])
    src = np.choose(kind, [w.machine[h], w.local_service[h], w.network_service[h]])
    dest = np.choose(kind, [w.system[h], w.local_service[h], w.network_service[h]])
    attrs = np.where(rng.random(n) < 0.05, BATCH, SERVICE)
    return [Rows.make(_activity_starts(rng, n, day, MACHINE_HOURS), src, dest, w.host[h], w.host[h], attrs)]


def _user_server(rng, w: World, n, day, roaming: bool = False) -> list[Rows]:
    u = rng.choice(len(w.user), size=n, p=w.user_weight)
    if roaming:
        ws = _pick(rng, w.workstations, n)
    else:
        ws = w.user_ws[u, (rng.random(n) < 0.25).astype(int)]
    srv = w.user_servers[u, rng.integers(0, 3, n)]
    dc = _pick(rng, w.dcs, n)
    acct = w.user[u]
    ntlm = w.ntlm_user[u]
    t0 = _activity_starts(rng, n, day, USER_HOURS)
    logon = rng.integers(0, 3, n)
    return _steps(
        t0,
        [
            (0, acct, acct, w.host[ws], w.host[dc], TGS, ~ntlm),
            (logon, acct, acct, w.host[ws], w.host[srv], np.where(ntlm, NTLM_LOGON, KRB_LOGON)),
            (logon + _logoff_delay(rng, n), acct, acct, w.host[srv], w.host[srv], LOGOFF),
        ],
    )


def _user_interactive(rng, w: World, n, day) -> list[Rows]:
    u = rng.choice(len(w.user), size=n, p=w.user_weight)
    ws = w.host[w.user_ws[u, (rng.random(n) < 0.25).astype(int)]]
    dc = w.host[_pick(rng, w.dcs, n)]
    acct = w.user[u]
    t0 = _activity_starts(rng, n, day, USER_HOURS)
    kind = np.asarray(INTERACTIVE)[rng.choice(len(INTERACTIVE), size=n, p=INTERACTIVE_P)]
    locked = rng.random(n) < 0.25
    lock_at = 60 + rng.exponential(1800, n).astype(np.int64)
    return _steps(
        t0,
        [
            (0, acct, acct, ws, dc, TGT, rng.random(n) < 0.7),
            (1, acct, acct, ws, ws, kind),
            (lock_at, acct, acct, ws, ws, SCREEN_LOCK, locked),
            (
                lock_at + 30 + rng.exponential(900, n).astype(np.int64),
                acct,
                acct,
                ws,
                ws,
                SCREEN_UNLOCK,
                locked,
            ),
        ],
    )


def _anonymous(rng, w: World, n, day) -> list[Rows]:
    srv = _pick(rng, w.servers, n, w.server_weight)
    src = _pick(rng, w.workstations, n, None)
    acct = w.anonymous[srv]
    t0 = _activity_starts(rng, n, day, MACHINE_HOURS)
    return _steps(
        t0,
        [
            (0, acct, acct, w.host[src], w.host[srv], NTLM_LOGON),
            (_logoff_delay(rng, n), acct, acct, w.host[srv], w.host[srv], LOGOFF),
        ],
    )


def _admin_fanout(rng, w: World, n, day) -> list[Rows]:
    i = rng.integers(0, len(w.admins), n)
    acct = w.user[w.admins[i]]
    src = w.host[w.admin_hosts[i]]
    dest = w.host[_pick(rng, np.concatenate([w.workstations, w.servers]), n)]
    t0 = _activity_starts(rng, n, day, USER_HOURS)
    attrs = np.where(rng.random(n) < 0.5, NTLM_LOGON, KRB_LOGON)
    return _steps(
        t0,
        [
            (0, acct, acct, src, dest, attrs),
            (_logoff_delay(rng, n), acct, acct, dest, dest, LOGOFF),
        ],
    )


#: kind -> (builder, expected rows per activity)
_BUILDERS: dict[str, tuple[Callable[..., list[Rows]], float]] = {
    "machine": (_machine, 2.6),
    "service": (_service, 1.0),
    "user_server": (_user_server, 3.0 - 0.08),  # NTLM users skip the ticket request
    "user_interactive": (_user_interactive, 1.7 + 0.5),
    "anonymous": (_anonymous, 2.0),
    "user_roaming": (lambda rng, w, n, day: _user_server(rng, w, n, day, roaming=True), 3.0 - 0.08),
    "admin_fanout": (_admin_fanout, 2.0),
}


def day_weight(day: int, kind: str) -> float:
    """Relative volume of ``kind`` on ``day`` (weekends are quieter, mostly for people)."""
    if day % 7 not in WEEKEND:
        return 1.0
    return USER_WEEKEND_FACTOR if kind in USER_DRIVEN else MACHINE_WEEKEND_FACTOR


def activities_per_day(cfg: GeneratorConfig) -> dict[str, np.ndarray]:
    """Number of activities of each benign kind on each day (total rows ~ days * events_per_day)."""
    out = {}
    for kind, share in BENIGN_SHARES.items():
        weights = np.array([day_weight(d, kind) for d in range(cfg.days)])
        acts = share * cfg.days * cfg.events_per_day / _BUILDERS[kind][1]
        out[kind] = np.round(acts * weights / weights.sum()).astype(np.int64)
    return out


def _apply_failures(rng: np.random.Generator, rows: Rows) -> None:
    failable = _FAILABLE[rows.attrs]
    p = FAILURE_RATE * len(rows) / max(int(failable.sum()), 1)
    fail = failable & (rng.random(len(rows)) < p)
    rows.attrs[fail] += FAIL


def benign_day(cfg: GeneratorConfig, world: World, day: int, counts: dict[str, np.ndarray]) -> Rows:
    """All benign rows whose activities start on ``day`` (unsorted; may spill past midnight)."""
    rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(2, day)))
    blocks: list[Rows] = []
    for kind, (builder, _) in _BUILDERS.items():
        blocks += builder(rng, world, int(counts[kind][day]), day)
    rows = Rows.concat(blocks)
    _apply_failures(rng, rows)
    return rows


# --------------------------------------------------------------------------------------
# Red-team campaigns
# --------------------------------------------------------------------------------------
@dataclass
class Campaign:
    """One red-team campaign: who, from where, to where, when."""

    index: int
    attacker_host: str
    users: list[str]  # compromised accounts (each used at least once)
    destinations: list[str]  # hosts the campaign may log on to
    bursts: list[tuple[int, int]]  # (start secs, end secs) of each stretch of activity
    malicious_rows: int = 0
    destinations_reached: int = 0
    style: str = "burst"  # one of STYLES
    first_malicious_secs: int = -1  # secs of its first malicious (A) row

    @property
    def burst_days(self) -> list[int]:
        return sorted({s // DAY for s, _ in self.bursts})


def plan_campaigns(cfg: GeneratorConfig, world: World) -> tuple[list[Campaign], Rows]:
    """Plan the campaigns and build their rows (labelled logons and unlabelled traces).

    The default scenario has ``cfg.campaigns`` burst campaigns on random days; the hard one
    is :func:`plan_hard_campaigns`.
    """
    if cfg.scenario == "hard":
        return plan_hard_campaigns(cfg, world)
    rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(1,)))
    user_pool = rng.permutation(np.setdiff1d(np.arange(len(world.user)), world.admins))
    dest_pool = _campaign_destinations(world)
    campaigns: list[Campaign] = []
    blocks: list[Rows] = []
    next_user = 0
    for c in range(cfg.campaigns):
        n_mal = max(3, int(rng.poisson(cfg.campaign_intensity)))
        n_users = int(np.clip(round(n_mal / 6.5), 3, max(3, len(user_pool) // max(cfg.campaigns, 1) - 1)))
        n_decoys = max(1, round(0.3 * n_users))
        if next_user + n_users + n_decoys > len(user_pool):  # tiny worlds: allow overlap
            next_user = 0
        users = user_pool[next_user : next_user + n_users]
        decoys = user_pool[next_user + n_users : next_user + n_users + n_decoys]
        next_user += n_users + n_decoys
        n_dest = int(np.clip(round(n_mal * 0.9), 3, len(dest_pool)))
        dests = rng.choice(dest_pool, size=n_dest, replace=False)
        candidate_days = np.arange(1, cfg.days) if cfg.days > 1 else np.array([0])
        campaign, rows = _burst_campaign(rng, world, c, world.attackers[c], users, decoys, dests, n_mal,
                                         candidate_days)  # fmt: skip
        campaigns.append(campaign)
        blocks += rows
    return campaigns, _concat_or_empty(blocks)


def _campaign_destinations(world: World) -> np.ndarray:
    """Hosts campaigns log on to: workstations and servers other than the domain controllers."""
    return np.concatenate([world.workstations, world.servers[world.n_dc :]])


def _concat_or_empty(blocks: list[Rows]) -> Rows:
    return Rows.concat(blocks) if blocks else Rows.make([], 0, 0, 0, 0, 0)


def _burst_campaign(
    rng: np.random.Generator,
    world: World,
    index: int,
    attacker: int,
    users: np.ndarray,
    decoys: np.ndarray,
    dests: np.ndarray,
    n_mal: int,
    candidate_days: np.ndarray,
    n_bursts: tuple[int, int] = (3, 6),
) -> tuple[Campaign, list[Rows]]:
    """LANL's shape: one attacker host, runs of NTLM logons per user to many destinations, in
    bursts of 40 min to 3 h on ``n_bursts`` (low, high exclusive) of ``candidate_days``.
    ``users``, ``decoys`` are user indexes, ``attacker`` and ``dests`` host indexes."""
    a_host = world.host[attacker]
    n_users, n_dest = len(users), len(dests)
    blocks: list[Rows] = []
    dest_w = 1.0 / np.arange(1, n_dest + 1) ** 0.5
    dest_w /= dest_w.sum()
    n_bursts = int(min(len(candidate_days), rng.integers(*n_bursts)))
    days = np.sort(rng.choice(candidate_days, size=n_bursts, replace=False))
    starts = days * DAY + rng.integers(7 * 3600, 19 * 3600, n_bursts)
    ends = starts + rng.integers(40 * 60, 3 * 3600, n_bursts)
    # every compromised user is used in some burst (its home burst), some in more than one
    home = rng.permutation(n_users) % n_bursts
    burst_users = []
    for b in range(n_bursts):
        in_burst = np.flatnonzero((home == b) | (rng.random(n_users) < 0.25))
        burst_users.append(rng.permutation(in_burst) if len(in_burst) else np.array([rng.integers(n_users)]))
    sizes = np.array([len(u) for u in burst_users])
    extra = max(n_mal - int(sizes.sum()), 0)
    per_burst = sizes + rng.multinomial(extra, rng.dirichlet(np.full(n_bursts, 2.0)))
    user_w = _lognormal_weights(rng, n_users, 0.7)
    reached: set[int] = set()
    for b in range(n_bursts):
        in_burst, m = burst_users[b], int(per_burst[b])
        p = user_w[in_burst] / user_w[in_burst].sum()
        per_user = rng.multinomial(m - len(in_burst), p) + 1
        times = np.sort(rng.integers(starts[b], ends[b], m))
        # the attacker works one credential at a time: a run of logons per user
        who = np.repeat(users[in_burst], per_user)
        dest = _pick(rng, dests, m, dest_w)
        reached.update(dest.tolist())
        acct = world.user[who]
        auth = np.where(rng.random(m) < 0.9, NTLM_LOGON, KRB_LOGON)
        blocks.append(Rows.make(times, acct, acct, a_host, world.host[dest], auth, True))
        # destinations log the session off (unlabelled, as in LANL)
        off = rng.random(m) < 0.8
        blocks.append(
            Rows.make(
                times[off] + 1 + rng.integers(0, 60, int(off.sum())),
                acct[off], acct[off], world.host[dest[off]], world.host[dest[off]], LOGOFF,
            )
        )  # fmt: skip
        # credential checks from the attacker host before each user's run (unlabelled)
        first = np.r_[0, np.cumsum(per_user)[:-1]]
        blocks.append(_probes(rng, world, acct[first], times[first], a_host, world.host[dest[first]]))
    # probes of users the attacker never uses (unlabelled decoys)
    if len(decoys):
        b = rng.integers(0, n_bursts, len(decoys))
        t = rng.integers(starts[b], ends[b])
        blocks.append(
            _probes(
                rng,
                world,
                world.user[decoys],
                t + 900,
                a_host,
                world.host[_pick(rng, dests, len(decoys))],
            )
        )
    campaign = Campaign(
        index=index,
        attacker_host=world.vocab[a_host],
        users=[world.vocab[world.user[u]] for u in users],
        destinations=[world.vocab[world.host[d]] for d in dests],
        bursts=[(int(s), int(e)) for s, e in zip(starts, ends, strict=True)],
        malicious_rows=int(per_burst.sum()),
        destinations_reached=len(reached),
        style="burst",
        first_malicious_secs=_first_malicious(blocks),
    )
    return campaign, blocks


def _first_malicious(blocks: list[Rows]) -> int:
    return min(int(b.secs[b.label].min()) for b in blocks if b.label.any())


def _probes(rng, world: World, acct, first_time, a_host, dest) -> Rows:
    """One or two unlabelled credential checks per account, 30 s to 15 min before ``first_time``."""
    n = len(acct)
    reps = 1 + rng.binomial(2, 0.5, n)
    acct, dest, first_time = np.repeat(acct, reps), np.repeat(dest, reps), np.repeat(first_time, reps)
    k = len(acct)
    t = first_time - rng.integers(30, 7200, k)
    local = rng.random(k) < 0.4  # a logon to the attacker host itself succeeds
    attrs = np.where(local, NTLM_LOGON, NTLM_LOGON + FAIL)
    return Rows.make(t, acct, acct, a_host, np.where(local, a_host, dest), attrs)


# --------------------------------------------------------------------------------------
# The hard scenario: campaigns of other shapes
# --------------------------------------------------------------------------------------
def plan_hard_campaigns(cfg: GeneratorConfig, world: World) -> tuple[list[Campaign], Rows]:
    """Small campaigns before the last two days, a larger one of another shape in them.

    The first ``cfg.campaigns - 1`` campaigns (styles HARD_EARLY_STYLES in turn, about
    ``HARD_SMALL * campaign_intensity`` malicious rows each) run on days 1 .. days-3 from
    their own attacker hosts; the last (``stealthy``, about ``HARD_LARGE * campaign_intensity``
    rows) runs on the last two days. Note: it changes ``world``: the stealthy campaign's
    accounts share a workstation from day 0, where the attacker later harvests their credentials.
    """
    rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(3,)))
    user_pool = rng.permutation(np.setdiff1d(np.arange(len(world.user)), world.admins))
    dest_pool = _campaign_destinations(world)
    next_user = 0

    def take_users(n: int) -> np.ndarray:
        nonlocal next_user
        n = min(n, len(user_pool))
        if next_user + n > len(user_pool):  # tiny worlds: allow overlap
            next_user = 0
        next_user += n
        return user_pool[next_user - n : next_user]

    early_days = np.arange(1, cfg.days - 2)
    late_days = np.arange(cfg.days - 2, cfg.days)
    n_late = 1 if cfg.campaigns else 0
    campaigns: list[Campaign] = []
    blocks: list[Rows] = []
    for c in range(cfg.campaigns - n_late):
        style = HARD_EARLY_STYLES[c % len(HARD_EARLY_STYLES)]
        n_mal = max(3, int(rng.poisson(HARD_SMALL * cfg.campaign_intensity)))
        users = take_users(int(max(3, round(n_mal / 6.5))))
        dests = rng.choice(dest_pool, size=int(np.clip(round(n_mal * 0.9), 3, len(dest_pool))), replace=False)
        if style == "burst":
            decoys = take_users(max(1, round(0.3 * len(users))))
            campaign, rows = _burst_campaign(rng, world, c, world.attackers[c], users, decoys, dests, n_mal,
                                             early_days, n_bursts=(2, 4))  # fmt: skip
        else:
            campaign, rows = _slow_campaign(
                rng, world, c, world.attackers[c], users, dests, n_mal, early_days
            )
        campaigns.append(campaign)
        blocks += rows
    if n_late:
        n_mal = max(3, int(rng.poisson(HARD_LARGE * cfg.campaign_intensity)))
        # accounts busy enough to have logged on at the shared host before the attacker harvests them
        rest = user_pool[next_user:] if next_user < len(user_pool) else user_pool
        busy = rest[world.user_weight[rest] >= np.median(world.user_weight)]
        team = busy[: int(max(3, round(n_mal / 10)))]
        # the team works from team[0]'s workstation too (a shared host), benign from day 0
        world.user_ws[team[1:], 1] = world.user_ws[team[0], 0]
        dests = rng.choice(dest_pool, size=int(np.clip(round(n_mal * 0.3), 3, len(dest_pool))), replace=False)
        campaign, rows = _stealthy_campaign(rng, world, len(campaigns), team, dests, n_mal, late_days)
        campaigns.append(campaign)
        blocks += rows
    return campaigns, _concat_or_empty(blocks)


def _sessions(rng, world: World, t0, acct, src, dest, auth, label: bool = False, logoff_p: float = 1.0):
    """Network logon sessions as rows: a ticket request (TGS) to a domain controller just
    before each Kerberos logon, the logon at ``t0`` (labelled ``label``), and the
    destination's logoff after it with probability ``logoff_p``. Hosts are codes."""
    t0 = np.asarray(t0, dtype=np.int64)
    n = len(t0)
    acct, src, dest, auth = (np.broadcast_to(np.asarray(v), (n,)) for v in (acct, src, dest, auth))
    krb = auth == KRB_LOGON
    dc = world.host[_pick(rng, world.dcs, n)]
    off = rng.random(n) < logoff_p
    return [
        Rows.make(t0[krb] - rng.integers(0, 3, int(krb.sum())), acct[krb], acct[krb], src[krb], dc[krb], TGS),
        Rows.make(t0, acct, acct, src, dest, auth, label),
        Rows.make(
            t0[off] + _logoff_delay(rng, int(off.sum())), acct[off], acct[off], dest[off], dest[off], LOGOFF
        ),
    ]


def _every_one_then_weighted(rng, n_items: int, n: int, sigma: float = 0.7) -> np.ndarray:
    """``n`` picks among ``n_items`` (n >= n_items): each item once, the rest by heavy-tailed weights."""
    extra = rng.choice(n_items, size=max(n - n_items, 0), p=_lognormal_weights(rng, n_items, sigma))
    return rng.permutation(np.concatenate([np.arange(n_items), extra]))[:n]


def _slow_campaign(rng, world: World, index: int, attacker: int, users, dests, n_mal: int, days):
    """A few logons a day over 3-5 consecutive ``days`` from one attacker host, in working
    hours, at most one per half-hour slot (two an hour) while a day has at most 20; 60 %
    NTLM; half of them to the account's own servers. A credential check precedes an
    account's first logon half of the time (unlabelled)."""
    a_host = world.host[attacker]
    span = int(min(len(days), rng.integers(3, 6)))
    active = days[int(rng.integers(0, len(days) - span + 1)) :][:span]
    day_of = np.sort(active[_every_one_then_weighted(rng, span, max(n_mal, span), sigma=0.3)[:n_mal]])
    times = np.empty(n_mal, dtype=np.int64)
    for d in np.unique(day_of):
        sel = np.flatnonzero(day_of == d)
        slots = rng.choice(20, size=len(sel), replace=len(sel) > 20)
        times[sel] = np.sort(d * DAY + 8 * 3600 + slots * 1800 + rng.integers(0, 1800, len(sel)))
    who = _every_one_then_weighted(rng, len(users), n_mal)
    u = users[who]
    own = rng.random(n_mal) < 0.5
    dest = np.where(own, world.user_servers[u, rng.integers(0, 3, n_mal)], _pick(rng, dests, n_mal))
    acct = world.user[u]
    auth = np.where(rng.random(n_mal) < 0.6, NTLM_LOGON, KRB_LOGON)
    blocks = _sessions(rng, world, times, acct, a_host, world.host[dest], auth, label=True, logoff_p=0.8)
    first = np.unique(who, return_index=True)[1]
    first = first[rng.random(len(first)) < 0.5]
    if len(first):
        blocks.append(_probes(rng, world, acct[first], times[first], a_host, world.host[dest[first]]))
    return _spread_campaign(world, index, "slow", a_host, users, dests, times, len(np.unique(dest))), blocks


def _spread_campaign(world: World, index: int, style: str, a_host: int, users, dests, times, reached: int):
    """The truth of a campaign without bursts: one stretch of activity per day it is active."""
    day_of = times // DAY
    return Campaign(
        index=index,
        attacker_host=world.vocab[a_host],
        users=[world.vocab[world.user[u]] for u in users],
        destinations=[
            world.vocab[world.host[d]] for d in np.union1d(dests, world.user_servers[users].ravel())
        ],
        bursts=[(int(times[day_of == d].min()), int(times[day_of == d].max())) for d in np.unique(day_of)],
        malicious_rows=len(times),
        destinations_reached=reached,
        style=style,
        first_malicious_secs=int(times.min()),
    )


def _stealthy_campaign(rng, world: World, index: int, team, dests, n_mal: int, days):
    """From a compromised workstation that ``team`` shares (``world.user_ws``), the
    attacker logs on as the team's accounts, 90 % Kerberos (with the ticket request),
    spread over the working hours of ``days``: mostly to destinations the account already
    uses (its own servers, or those the campaign reached as it before), now and then to one
    of ``dests``, with at most STEALTHY_NEW_DESTS_PER_HOUR destinations new to the campaign
    in any clock hour. No failed credential checks."""
    ws = world.user_ws[team[0], 0]
    a_host = world.host[ws]
    day_of = np.sort(days[_every_one_then_weighted(rng, len(days), max(n_mal, len(days)), 0.2)[:n_mal]])
    times = np.sort(day_of * DAY + rng.integers(8 * 3600, 18 * 3600, n_mal))
    who = _every_one_then_weighted(rng, len(team), n_mal)
    dest = np.empty(n_mal, dtype=np.int64)
    reached: set[int] = set()
    known = [set(world.user_servers[u].tolist()) for u in team]  # destinations each account uses
    new_in_hour: dict[int, int] = {}
    for i in range(n_mal):
        k, hour = who[i], int(times[i] // 3600)
        options = sorted(known[k])
        d = int(_pick(rng, dests, 1)[0]) if rng.random() < 0.2 else int(options[rng.integers(len(options))])
        if d not in reached and new_in_hour.get(hour, 0) >= STEALTHY_NEW_DESTS_PER_HOUR:
            options = sorted(known[k] & reached) or sorted(reached)
            d = int(options[rng.integers(len(options))])
        if d not in reached:
            reached.add(d)
            new_in_hour[hour] = new_in_hour.get(hour, 0) + 1
        known[k].add(d)
        dest[i] = d
    acct = world.user[team[who]]
    auth = np.where(rng.random(n_mal) < 0.9, KRB_LOGON, NTLM_LOGON)
    blocks = _sessions(rng, world, times, acct, a_host, world.host[dest], auth, label=True, logoff_p=0.8)
    return _spread_campaign(world, index, "stealthy", a_host, team, dests, times, len(reached)), blocks


# --------------------------------------------------------------------------------------
# The hard scenario: benign novelty bursts (label N), so that novelty alone is no answer
# --------------------------------------------------------------------------------------
@dataclass
class BenignBurst:
    """A benign event that makes many first-time edges: who, where, when."""

    kind: str  # one of BURST_KINDS
    day: int
    start_secs: int
    users: list[str]
    hosts: list[str]  # the new hosts it brings (new_employee, new_server, admin_sweep, new_workstation)
    rows: int = 0


class _NewIdentities:
    """New hosts and accounts appended to ``world.vocab`` (existing codes keep their meaning)."""

    def __init__(self, world: World, rng: np.random.Generator) -> None:
        self.world, self.rng = world, rng
        self.used = {int(v[1:].split("@")[0]) for v in world.vocab if v[0] in "CU" and "$" not in v}

    def _fresh(self, prefix: str) -> tuple[int, str]:
        while True:
            i = int(self.rng.integers(1, max(30_000, 3 * len(self.used))))
            if i not in self.used:
                self.used.add(i)
                return i, f"{prefix}{i}"

    def _code(self, name: str) -> int:
        self.world.vocab.append(name)
        return len(self.world.vocab) - 1

    def host(self) -> tuple[int, int]:
        """(code of "C123", code of its computer account "C123$@DOM1")"""
        _, name = self._fresh("C")
        return self._code(name), self._code(f"{name}$@DOM1")

    def user(self) -> int:
        _, name = self._fresh("U")
        return self._code(f"{name}@DOM1")


def plan_benign_bursts(cfg: GeneratorConfig, world: World) -> tuple[list[BenignBurst], Rows]:
    """Each kind of BURST_KINDS once on a weekday before the last two days and once in them:

    * ``new_employee``: a new account on a new workstation reaches 12-20 servers for the
      first time on its first morning, then uses three of them daily;
    * ``new_server``: a new server that a quarter of the users reach in one morning, and
      some of them daily after;
    * ``admin_sweep``: an administrator logs on to 40 % of the workstations and servers in two
      hours, from a new management host;
    * ``new_workstation``: 4-8 users get a new laptop and work from it from then on.

    Every row is labelled N. New hosts and accounts are appended to ``world.vocab``.
    """
    rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(4,)))
    new = _NewIdentities(world, rng)
    last_day = cfg.days - 1

    def weekdays(days: range) -> list[int]:
        return [d for d in days if d % 7 not in WEEKEND] or list(days)

    periods = (weekdays(range(1, cfg.days - 2)), weekdays(range(cfg.days - 2, cfg.days)))
    builders = {"new_employee": _new_employee, "new_server": _new_server,
                "admin_sweep": _admin_sweep, "new_workstation": _new_workstation}  # fmt: skip
    bursts: list[BenignBurst] = []
    blocks: list[Rows] = []
    for kind in BURST_KINDS:
        for period in periods:
            day = int(period[rng.integers(len(period))])
            burst, rows = builders[kind](rng, world, new, day, last_day)
            burst.rows = sum(len(r) for r in rows)
            bursts.append(burst)
            blocks += rows
    return bursts, _concat_or_empty(blocks)


def _user_days(rng, world: World, acct, ws, servers, first_day: int, last_day: int, per_day: float):
    """Ordinary Kerberos sessions of accounts ``acct`` (one per row of ``servers``) from ``ws``
    to their ``servers`` (codes, shape (accounts, k)) on ``first_day`` .. ``last_day``."""
    blocks: list[Rows] = []
    acct, ws = np.asarray(acct), np.asarray(ws)
    for d in range(first_day, last_day + 1):
        n = rng.poisson(per_day * day_weight(d, "user_server"), len(acct))
        who = np.repeat(np.arange(len(acct)), n)
        if not len(who):
            continue
        srv = servers[who, rng.integers(0, servers.shape[1], len(who))]
        t0 = _activity_starts(rng, len(who), d, USER_HOURS)
        blocks += _sessions(rng, world, t0, acct[who], ws[who], srv, KRB_LOGON)
    return blocks


def _boot(rng, world: World, t0: int, host: int, machine: int) -> list[Rows]:
    """A new host's computer account asks a domain controller for tickets."""
    dc = world.host[_pick(rng, world.dcs, 3)]
    return [Rows.make(t0 + np.arange(3) * 60, machine, machine, host, dc, [TGT, TGS, TGS])]


def _morning(rng, day: int) -> int:
    return day * DAY + 8 * 3600 + int(rng.integers(0, 5400))


def _new_employee(rng, world: World, new: _NewIdentities, day: int, last_day: int):
    acct = new.user()
    ws, machine = new.host()
    start = _morning(rng, day)
    all_servers = world.host[world.servers]
    servers = rng.choice(all_servers, size=min(len(all_servers), int(rng.integers(12, 21))), replace=False)
    t0 = np.sort(start + 120 + rng.integers(0, 4 * 3600, len(servers)))
    blocks = _boot(rng, world, start - 900, ws, machine)
    blocks.append(
        Rows.make([start, start + 1], acct, acct, ws, [world.host[world.dcs[0]], ws], [TGT, INTERACTIVE[0]])
    )
    blocks += _sessions(rng, world, t0, acct, ws, servers, KRB_LOGON)
    blocks += _user_days(rng, world, [acct], [ws], servers[None, :3], day + 1, last_day, 12.0)
    burst = BenignBurst("new_employee", day, start, [world.vocab[acct]], [world.vocab[ws]])
    return burst, blocks


def _new_server(rng, world: World, new: _NewIdentities, day: int, last_day: int):
    srv, machine = new.host()
    start = _morning(rng, day)
    users = rng.choice(len(world.user), size=max(10, len(world.user) // 4), replace=False)
    acct, ws = world.user[users], world.host[world.user_ws[users, 0]]
    t0 = start + rng.integers(0, 4 * 3600, len(users))
    blocks = _boot(rng, world, start - 1800, srv, machine)
    blocks += _sessions(rng, world, t0, acct, ws, srv, KRB_LOGON)
    regulars = rng.random(len(users)) < 0.3
    blocks += _user_days(rng, world, acct[regulars], ws[regulars], np.full((int(regulars.sum()), 1), srv),
                         day + 1, last_day, 1.0)  # fmt: skip
    burst = BenignBurst("new_server", day, start, [world.vocab[a] for a in acct], [world.vocab[srv]])
    return burst, blocks


def _admin_sweep(rng, world: World, new: _NewIdentities, day: int, last_day: int):
    admin = world.user[world.admins[rng.integers(len(world.admins))]]
    src, machine = new.host()
    start = day * DAY + int(rng.integers(9 * 3600, 15 * 3600))
    targets = np.concatenate([world.workstations, world.servers])
    dest = world.host[rng.choice(targets, size=max(20, round(0.4 * len(targets))), replace=False)]
    t0 = np.sort(start + rng.integers(0, 2 * 3600, len(dest)))
    auth = np.where(rng.random(len(dest)) < 0.5, NTLM_LOGON, KRB_LOGON)
    blocks = _boot(rng, world, start - 600, src, machine)
    blocks += _sessions(rng, world, t0, admin, src, dest, auth)
    burst = BenignBurst("admin_sweep", day, start, [world.vocab[admin]], [world.vocab[src]])
    return burst, blocks


def _new_workstation(rng, world: World, new: _NewIdentities, day: int, last_day: int):
    users = rng.choice(np.setdiff1d(np.arange(len(world.user)), world.admins), size=int(rng.integers(4, 9)),
                       replace=False)  # fmt: skip
    hosts = [new.host() for _ in users]
    ws = np.array([h for h, _ in hosts])
    acct = world.user[users]
    start = _morning(rng, day)
    blocks: list[Rows] = []
    for (h, machine), a in zip(hosts, acct, strict=True):
        t = start + int(rng.integers(0, 3600))
        blocks += _boot(rng, world, t - 300, h, machine)
        blocks.append(Rows.make([t], a, a, h, h, INTERACTIVE[0]))
    servers = world.host[world.user_servers[users]]
    blocks += _user_days(rng, world, acct, ws, servers, day, last_day, 6.0)
    burst = BenignBurst("new_workstation", day, start, [world.vocab[a] for a in acct],
                        [world.vocab[h] for h in ws])  # fmt: skip
    return burst, blocks


# --------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------
def _suffixes() -> np.ndarray:
    """``,auth,login,stage,result,label`` per (attribute code * 2 + label)."""
    out = []
    for attrs in ATTRIBUTES:
        for label in (LABEL_CLEAN, LABEL_MALICIOUS):
            out.append("," + ",".join(attrs) + "," + label)
    return np.array(out, dtype=object)


def format_rows(rows: Rows, vocab: np.ndarray, suffixes: np.ndarray) -> str:
    """CSV text of ``rows`` (already in output order), one line per row, each ending in a newline."""
    if len(rows) == 0:
        return ""
    secs = rows.secs.astype(str).tolist()
    sn = vocab[rows.src_name].tolist()
    dn = vocab[rows.dest_name].tolist()
    sh = vocab[rows.src_host].tolist()
    dh = vocab[rows.dest_host].tolist()
    suf = suffixes[rows.attrs.astype(np.int64) * 2 + rows.label].tolist()
    lines = [f"{a},{b},{c},{d},{e}{f}" for a, b, c, d, e, f in zip(secs, sn, dn, sh, dh, suf, strict=True)]
    return "\n".join(lines) + "\n"


@dataclass
class GenerateSummary:
    """What was written."""

    path: Path
    rows: int = 0
    malicious_rows: int = 0
    connections: int = 0
    days: int = 0
    scenario: str = "default"
    campaigns: list[Campaign] = field(default_factory=list)
    benign_bursts: list[BenignBurst] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [
            f"wrote {self.path} (scenario {self.scenario})",
            f"  rows            {self.rows:,} over {self.days} day(s)",
            f"  malicious rows  {self.malicious_rows:,} (label A)",
            f"  connections     {self.connections:,} (src_name / dest_name)",
            f"  campaigns       {len(self.campaigns)}",
        ]
        for c in self.campaigns:
            out.append(
                f"    #{c.index} {c.style}: attacker {c.attacker_host}, {len(c.users)} users, "
                f"{c.destinations_reached} destinations, {c.malicious_rows} malicious rows, "
                f"active on days {', '.join(str(d) for d in c.burst_days)}"
            )
        if self.benign_bursts:
            out.append(f"  benign bursts   {len(self.benign_bursts)} (label N)")
        for b in self.benign_bursts:
            out.append(
                f"    {b.kind} on day {b.day}: {len(b.users)} user(s), new host(s) {', '.join(b.hosts[:3])}"
                f"{' ...' if len(b.hosts) > 3 else ''}, {b.rows} rows"
            )
        return out

    def truth(self) -> dict:
        """The campaigns and benign bursts, as JSON-ready values (``generate --truth``)."""
        return {
            "scenario": self.scenario,
            "days": self.days,
            "campaigns": [asdict(c) for c in self.campaigns],
            "benign_bursts": [asdict(b) for b in self.benign_bursts],
        }


def generate(
    cfg: GeneratorConfig,
    out: Path,
    progress: bool = False,
) -> GenerateSummary:
    """Generate ``cfg.days`` days of traffic into ``out`` (CSV with header, sorted by secs)."""
    world_rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(0,)))
    world = build_world(cfg, world_rng)
    campaigns, campaign_rows = plan_campaigns(cfg, world)
    last_sec = cfg.days * DAY - 1
    benign_bursts: list[BenignBurst] = []
    if cfg.scenario == "hard":
        benign_bursts, burst_rows = plan_benign_bursts(cfg, world)
        # planned rows ride with the campaigns' (a day's rows are taken by the day they start)
        campaign_rows = Rows.concat([campaign_rows, burst_rows])
        np.clip(campaign_rows.secs, 0, last_sec, out=campaign_rows.secs)
    counts = activities_per_day(cfg)
    vocab = np.array(world.vocab, dtype=object)
    suffixes = _suffixes()
    n_vocab = np.int64(len(vocab))
    summary = GenerateSummary(
        path=Path(out), days=cfg.days, scenario=cfg.scenario, campaigns=campaigns, benign_bursts=benign_bursts
    )
    connections = np.empty(0, dtype=np.int64)
    campaign_day = campaign_rows.secs // DAY

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.days, unit="day", desc="generate", dynamic_ncols=True)
    spill = Rows.make([], 0, 0, 0, 0, 0)
    with open(tmp, "w", encoding="utf-8", newline="\n", buffering=4 << 20) as fh:
        fh.write(HEADER + "\n")
        for day in range(cfg.days):
            todays = campaign_rows.take(campaign_day == day)
            rows = Rows.concat([spill, benign_day(cfg, world, day, counts), todays])
            if day == cfg.days - 1:
                np.minimum(rows.secs, last_sec, out=rows.secs)
            rows = rows.take(np.argsort(rows.secs, kind="stable"))
            cut = int(np.searchsorted(rows.secs, (day + 1) * DAY))
            spill, rows = rows.take(slice(cut, None)), rows.take(slice(0, cut))
            fh.write(format_rows(rows, vocab, suffixes))
            summary.rows += len(rows)
            summary.malicious_rows += int(rows.label.sum())
            connections = np.union1d(connections, rows.src_name.astype(np.int64) * n_vocab + rows.dest_name)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(rows=f"{summary.rows:,}")
    if bar is not None:
        bar.close()
    tmp.replace(out)
    summary.connections = len(connections)
    return summary
