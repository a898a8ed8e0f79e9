"""The research rules every validator applies (called from node.ledger.state): consent ownership, projects, the
export gate. Pure and deterministic: decisions depend only on the state and the block's agreed timestamp.

State keys (values msgpack; written in the block's one batch like every state write)::

    home/<patient 16>                         -> member name: the patient's home member
    consent/<patient 16><msgpack [grantee, scope]>   -> {expires, purpose, member, tx, ts}   (node.ledger.state)
    research/<patient 16><msgpack [grantee, scope]>  -> the same, for research.access.granted
    project/<code>                            -> {sponsor, digest, purpose, scope, expires, modality?,
                                                  body_part?, date_from?, date_to?, waiver, tx}
    approval/<code> 00 <member>               -> tx hash of the member's approval
    cvote/<sha256 of the change>              -> msgpack [patient, grantee, scope, action, purpose, expires,
                                                          project, voters]

Rules (a tx that breaks one is REJECTED at execution by every validator, and refused at admission by an
honest node, with the reason):

1. **Consent ownership.** The first member to record a consent tx (granted, revoked, research access) for
   a patient becomes the patient's home member. After that only the home member may grant, revoke or
   change that patient's consents. Any other change needs a ``consent.vote`` by a quorum (2f+1 of the
   current members, node.ledger.state's quorum): the identical change voted by that many members is applied.
2. **Projects.** ``research.project.registered`` by any member (the sponsor) with a new code, a future
   expiry and a research purpose; ``research.project.approved`` by a data-holding member, once, for a
   registered project not yet expired.
3. **Export gate.** An ``export`` or ``deidentified`` tx with a research purpose, or naming a project,
   must name a registered, unexpired project that the submitting member approved, whose purpose covers
   the tx's, whose data scope (modality, body part, study dates) contains the tx's study, and for the
   patient either the project's recorded waiver or a consent in force at this block: granted for the
   project's code or for any approved project (codes.ANY_PROJECT), for a purpose covering the tx's, of a
   scope covering the study's modality, not expired at the block's timestamp.

Memory: homes, consents, projects and votes are held in memory (loaded with the rest of the state at
start). About 200 bytes per consent: a million consents is ~200 MB. A store-backed reader is the next step
if consortia hold far more.
"""

from __future__ import annotations

import hashlib

import msgpack

from node.vocabulary import ANY_PROJECT, RESEARCH_PURPOSES, is_research, purpose_covers, scope_covers

__all__ = ["ResearchState", "GATED_TYPES", "RESEARCH_STATE_TYPES", "CONSENT_CHANGE_TYPES"]

_pack = msgpack.Packer(use_bin_type=True).pack

CONSENT_CHANGE_TYPES = frozenset({"consent.granted", "consent.revoked", "research.access.granted"})
GATED_TYPES = frozenset({"export", "deidentified"})
RESEARCH_STATE_TYPES = frozenset({"research.project.registered", "research.project.approved", "consent.vote"})
_PROJECT_FIELDS = ("digest", "purpose", "scope", "expires", "modality", "body_part", "date_from", "date_to",
                   "waiver")


def consent_key(kind: str, patient: bytes, grantee: bytes, scope: str) -> bytes:
    return kind.encode() + b"/" + patient + _pack([grantee, scope])


class ResearchState:
    """Homes, consents in force, projects, approvals and pending consent votes."""

    def __init__(self) -> None:
        self.homes: dict[bytes, str] = {}
        # patient -> {(kind, grantee, scope): (expires, purpose, project or None)}
        self.consents: dict[bytes, dict[tuple[str, str, str], tuple[int, str, str | None]]] = {}
        self.projects: dict[str, dict] = {}
        self.approvals: set[tuple[str, str]] = set()
        self.votes: dict[bytes, tuple[tuple, set[str]]] = {}

    # ------------------------------------------------------------------ loading
    def load_item(self, key: bytes, value: bytes) -> bool:
        """Take one stored state item if it is ours; False if not."""
        if key.startswith(b"home/"):
            self.homes[key[5:]] = value.decode()
        elif key.startswith(b"consent/") or key.startswith(b"research/"):
            kind, _, rest = key.partition(b"/")
            patient, (grantee, scope) = rest[:16], msgpack.unpackb(rest[16:], raw=False)
            v = msgpack.unpackb(value, raw=False)
            self.consents.setdefault(patient, {})[(kind.decode(), grantee, scope)] = (
                v["expires"], v["purpose"], v.get("project"))
        elif key.startswith(b"project/"):
            self.projects[key[8:].decode()] = msgpack.unpackb(value, raw=False)
        elif key.startswith(b"approval/"):
            code, _, member = key[9:].partition(b"\x00")
            self.approvals.add((code.decode(), member.decode()))
        elif key.startswith(b"cvote/"):
            *change, voters = msgpack.unpackb(value, raw=False)  # change: patient .. project, see apply
            self.votes[key[6:]] = (tuple(change), set(voters))
        else:
            return False
        return True

    # ------------------------------------------------------------------ decisions
    def decide(self, f: dict, block_time: int, members: dict, quorum: int) -> str | None:
        """Why ``f`` (a tx's fields) breaks a research rule at ``block_time``, or None if it does not."""
        t = f["type"]
        member = f["member"]
        if t in CONSENT_CHANGE_TYPES:
            home = self.homes.get(f["patient"])
            if home is not None and home != member:
                return (f"consent: this patient's consents are held by its home member {home!r}; {member!r} "
                        f"may change them only by a quorum vote (consent.vote)")
            return None
        if t == "consent.vote":
            if f["action"] not in ("C", "D"):
                return "action: a consent vote is C (grant) or D (revoke)"
            if f["action"] == "C" and "purpose" not in f:
                return "purpose: a vote to grant a consent names its purpose"
            return None
        if t == "research.project.registered":
            code = f["project"]
            if code in self.projects:
                return f"project: {code} is already registered"
            if f["purpose"] not in RESEARCH_PURPOSES:
                return f"purpose: a research project's purpose is a research code ({', '.join(sorted(RESEARCH_PURPOSES))})"
            if f["expires"] <= block_time:
                return "expires: the project's expiry is already past"
            if "date_from" in f and "date_to" in f and f["date_from"] > f["date_to"]:
                return "date_from: after date_to"
            return None
        if t == "research.project.approved":
            code = f["project"]
            p = self.projects.get(code)
            if p is None:
                return f"project: {code} is not registered"
            if p["expires"] <= block_time:
                return f"project: {code} expired"
            if (code, member) in self.approvals:
                return f"project: {member} already approved {code}"
            return None
        if t in GATED_TYPES:
            return self._gate(f, block_time)
        return None

    def _gate(self, f: dict, block_time: int) -> str | None:
        purpose = f.get("purpose")
        code = f.get("project")
        if code is None:
            if is_research(purpose):
                return f"project: a {f['type']} for research ({purpose}) must name an approved project"
            return None
        if not is_research(purpose):
            return f"purpose: {purpose} is not a research purpose; an export under a project is research"
        p = self.projects.get(code)
        if p is None:
            return f"project: {code} is not registered"
        if p["expires"] <= block_time:
            return f"project: {code} expired"
        if (code, f["member"]) not in self.approvals:
            return f"project: {f['member']} has not approved {code}"
        if not purpose_covers(p["purpose"], purpose):
            return f"purpose: {purpose} is outside the project's purpose {p['purpose']}"
        modality = f.get("modality")
        if not scope_covers(p["scope"], modality):
            return f"modality: the study ({modality or 'modality not recorded'}) is outside the project's scope {p['scope']}"
        for name in ("modality", "body_part"):
            if name in p and f.get(name) != p[name]:
                return f"{name}: the study ({f.get(name) or 'not recorded'}) is outside the project's {name} {p[name]}"
        if "date_from" in p or "date_to" in p:
            day = f.get("study_date")
            if day is None or not p.get("date_from", 0) <= day <= p.get("date_to", 99999999):
                return f"study_date: the study ({day or 'date not recorded'}) is outside the project's date range"
        if p.get("waiver"):
            return None
        for (_kind, grantee, scope), (expires, c_purpose, c_project) in self.consents.get(f["patient"], {}).items():
            if ((c_project or grantee) in (code, ANY_PROJECT) and scope_covers(scope, modality)
                    and purpose_covers(c_purpose, purpose) and (expires == 0 or block_time < expires)):
                return None
        return (f"consent: no consent in force for this patient covers project {code} "
                f"({purpose}, {modality or 'any modality'}) and the project has no waiver")

    # ------------------------------------------------------------------ execution
    def apply(self, f: dict, tx_hash: bytes, writes: list, block_time: int, members: dict,
              quorum: int) -> str | None:
        """Decide and, if allowed, apply; the rejection reason, or None (applied, writes appended)."""
        reason = self.decide(f, block_time, members, quorum)
        if reason is not None:
            return reason
        t = f["type"]
        patient = f.get("patient")
        if t in CONSENT_CHANGE_TYPES:
            if patient not in self.homes:
                self.homes[patient] = f["member"]
                writes.append((b"home/" + patient, f["member"].encode()))
            if t == "consent.revoked":
                self._revoke(patient, f["grantee"], f["scope"], writes)
            else:
                kind = "consent" if t == "consent.granted" else "research"
                self._grant(kind, patient, f["grantee"], f["scope"], f.get("expires", 0), f["purpose"],
                            f["member"], tx_hash, f["ts"], writes, f.get("project"))
            return None
        if t == "consent.vote":
            change = (patient, f["grantee"], f["scope"], f["action"], f.get("purpose", ""), f.get("expires", 0),
                      f.get("project", ""))
            vote_id = hashlib.sha256(_pack(list(change))).digest()
            _, voters = self.votes.setdefault(vote_id, (change, set()))
            voters.add(f["member"])
            if len(voters & members.keys()) < quorum:
                writes.append((b"cvote/" + vote_id, _pack([*change, sorted(voters)])))
                return None
            del self.votes[vote_id]
            writes.append((b"cvote/" + vote_id, None))
            if patient not in self.homes:
                self.homes[patient] = f["member"]
                writes.append((b"home/" + patient, f["member"].encode()))
            if f["action"] == "D":
                self._revoke(patient, f["grantee"], f["scope"], writes)
            else:
                self._grant("consent", patient, f["grantee"], f["scope"], f.get("expires", 0), f["purpose"],
                            "quorum", tx_hash, f["ts"], writes, f.get("project") or None)
            return None
        if t == "research.project.registered":
            p = {k: f[k] for k in _PROJECT_FIELDS if k in f}
            p.setdefault("waiver", 0)
            p.update(sponsor=f["member"], tx=tx_hash)
            self.projects[f["project"]] = p
            writes.append((b"project/" + f["project"].encode(), _pack(p)))
            return None
        if t == "research.project.approved":
            self.approvals.add((f["project"], f["member"]))
            writes.append((b"approval/" + f["project"].encode() + b"\x00" + f["member"].encode(), tx_hash))
            return None
        return None  # gated types: allowed, no state effect

    def _grant(self, kind, patient, grantee, scope, expires, purpose, member, tx_hash, ts, writes,
               project=None) -> None:
        self.consents.setdefault(patient, {})[(kind, grantee, scope)] = (expires, purpose, project)
        value = {"expires": expires, "purpose": purpose, "member": member, "tx": tx_hash, "ts": ts}
        if project is not None:
            value["project"] = project
        writes.append((consent_key(kind, patient, grantee, scope), _pack(value)))

    def _revoke(self, patient, grantee, scope, writes) -> None:
        held = self.consents.get(patient, {})
        for kind in ("consent", "research"):
            held.pop((kind, grantee, scope), None)
            writes.append((consent_key(kind, patient, grantee, scope), None))
        if not held:
            self.consents.pop(patient, None)
