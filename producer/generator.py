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

Everything is drawn from ``numpy.random.SeedSequence(seed)``: the same seed and settings
give the same bytes. Day ``d`` has its own random stream, so memory stays bounded by one
day of rows however many days are asked for.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
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


@dataclass(frozen=True)
class GeneratorConfig:
    """What to generate. ``events_per_day`` is the mean number of benign rows per day."""

    days: int = 10
    events_per_day: int = 25_000
    seed: int = 7
    campaigns: int = 3
    #: mean number of malicious (``A``) rows per campaign
    campaign_intensity: float = 110.0

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
    bursts: list[tuple[int, int]]  # (start secs, end secs)
    malicious_rows: int = 0
    destinations_reached: int = 0

    @property
    def burst_days(self) -> list[int]:
        return sorted({s // DAY for s, _ in self.bursts})


def plan_campaigns(cfg: GeneratorConfig, world: World) -> tuple[list[Campaign], Rows]:
    """Plan the campaigns and build their rows (labelled logons and unlabelled traces)."""
    rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(1,)))
    user_pool = rng.permutation(np.setdiff1d(np.arange(len(world.user)), world.admins))
    dest_pool = np.concatenate([world.workstations, world.servers[world.n_dc :]])
    campaigns: list[Campaign] = []
    blocks: list[Rows] = []
    next_user = 0
    for c in range(cfg.campaigns):
        attacker = world.attackers[c]
        a_host = world.host[attacker]
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
        dest_w = 1.0 / np.arange(1, n_dest + 1) ** 0.5
        dest_w /= dest_w.sum()

        candidate_days = np.arange(1, cfg.days) if cfg.days > 1 else np.array([0])
        n_bursts = int(min(len(candidate_days), rng.integers(3, 6)))
        days = np.sort(rng.choice(candidate_days, size=n_bursts, replace=False))
        starts = days * DAY + rng.integers(7 * 3600, 19 * 3600, n_bursts)
        ends = starts + rng.integers(40 * 60, 3 * 3600, n_bursts)
        # every compromised user is used in some burst (its home burst), some in more than one
        home = rng.permutation(n_users) % n_bursts
        burst_users = []
        for b in range(n_bursts):
            in_burst = np.flatnonzero((home == b) | (rng.random(n_users) < 0.25))
            burst_users.append(
                rng.permutation(in_burst) if len(in_burst) else np.array([rng.integers(n_users)])
            )
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
        campaigns.append(
            Campaign(
                index=c,
                attacker_host=world.vocab[a_host],
                users=[world.vocab[world.user[u]] for u in users],
                destinations=[world.vocab[world.host[d]] for d in dests],
                bursts=[(int(s), int(e)) for s, e in zip(starts, ends, strict=True)],
                malicious_rows=int(per_burst.sum()),
                destinations_reached=len(reached),
            )
        )
    if not blocks:
        return campaigns, Rows.make([], 0, 0, 0, 0, 0)
    return campaigns, Rows.concat(blocks)


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
    campaigns: list[Campaign] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [
            f"wrote {self.path}",
            f"  rows            {self.rows:,} over {self.days} day(s)",
            f"  malicious rows  {self.malicious_rows:,} (label A)",
            f"  connections     {self.connections:,} (src_name / dest_name)",
            f"  campaigns       {len(self.campaigns)}",
        ]
        for c in self.campaigns:
            out.append(
                f"    #{c.index}: attacker {c.attacker_host}, {len(c.users)} users, "
                f"{c.destinations_reached} destinations, {c.malicious_rows} malicious rows, "
                f"bursts on days {', '.join(str(d) for d in c.burst_days)}"
            )
        return out


def generate(
    cfg: GeneratorConfig,
    out: Path,
    progress: bool = False,
) -> GenerateSummary:
    """Generate ``cfg.days`` days of traffic into ``out`` (CSV with header, sorted by secs)."""
    world_rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(0,)))
    world = build_world(cfg, world_rng)
    campaigns, campaign_rows = plan_campaigns(cfg, world)
    counts = activities_per_day(cfg)
    vocab = np.array(world.vocab, dtype=object)
    suffixes = _suffixes()
    n_vocab = np.int64(len(vocab))
    last_sec = cfg.days * DAY - 1
    summary = GenerateSummary(path=Path(out), days=cfg.days, campaigns=campaigns)
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
