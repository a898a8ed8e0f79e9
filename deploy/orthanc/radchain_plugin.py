"""RadChain's Orthanc plugin (orthanc-python 4.0, Orthanc 1.10): stores and HTTP reads become raw events.

Loaded by Orthanc's embedded Python (Debian's python3.11); it imports only the standard-library parts of
node.dicom, so no virtual environment is needed. Configure it in the Orthanc JSON (see orthanc.json here):

    "PythonScript": "/opt/radchain/deploy/orthanc/radchain_plugin.py",
    "RadChain": {
        "Home": "/var/lib/radchain/node",   // node home: config.toml ([rpc], [dicom]) and spool/
        "SourceDir": "/opt/radchain",      // optional: where node/ lives (default: two levels up)
        "RecordDicomStores": true,         // false when the DICOM audit proxy fronts this Orthanc
        "Deliver": true                    // run a spool deliverer thread in Orthanc (one per spool)
    }

Hooks: OnStoredInstance (every stored instance, any origin: C-STORE, REST upload, plugins) ->
`instances.stored` with digests; IncomingHttpRequestFilter (REST, WADO-URI, DICOMweb) -> `instances.accessed`
for instance/series/study reads, `query` for QIDO naming a patient or study, `study.deleted` for DELETE.
Both spool synchronously (fsync, ~1 ms) before Orthanc goes on, so an acknowledged store or an answered
read always has its event on disk. C-GET and C-MOVE have no hook in Orthanc 1.10: use the proxy for those.
"""

import base64
import json
import logging
import os
import re
import sys
import threading
import time

import orthanc

_CFG = json.loads(orthanc.GetConfiguration()).get("RadChain", {})
_SRC = _CFG.get("SourceDir") or os.environ.get("RADCHAIN_SRC") or os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if _SRC not in sys.path:
    sys.path.insert(0, _SRC)

from node.dicom import records  # noqa: E402
from node.dicom.rawdicom import (  # noqa: E402
    DEFLATED_LE,
    MAX_NESTING,
    DicomFormatError,
    DicomLimitError,
    inspect_file,
    split_file,
    walk_dataset,
)
from node.dicom.settings import load_settings  # noqa: E402
from node.dicom.spool import Spool  # noqa: E402

log = logging.getLogger("radchain.orthanc")

if not _CFG.get("Home"):
    raise RuntimeError('radchain_plugin: set "RadChain": {"Home": "<node home>"} in the Orthanc configuration')
SETTINGS = load_settings(_CFG["Home"])
SPOOL = Spool(SETTINGS.spool_dir)
RECORD_DICOM_STORES = bool(_CFG.get("RecordDicomStores", True))
OWN_AET = json.loads(orthanc.GetConfiguration()).get("DicomAet", "ORTHANC")
COMMON = {"purpose": SETTINGS.purpose, "default_issuer": SETTINGS.default_issuer}
ORIGIN = {getattr(orthanc.InstanceOrigin, n): n for n in dir(orthanc.InstanceOrigin) if n.isupper()}
HMETH = {getattr(orthanc.HttpMethod, n): n for n in dir(orthanc.HttpMethod) if n.isupper()}


_UIDISH = re.compile(r"[0-9]+(?:\.[0-9]+){3,}|[0-9a-f]{8}-[0-9a-f]{8}-[0-9a-f]{8}-[0-9a-f]{8}-[0-9a-f]{8}")


def _redact(uri):
    """A URI for Orthanc's log: DICOM UIDs and Orthanc ids (which name studies and patients) replaced."""
    return _UIDISH.sub("<id>", uri.split("?", 1)[0])


def _error(what, exc):
    orthanc.LogError(f"radchain: {what}: {exc}")


def _spool(events, source, local):
    """Spool the events the node can take; journal (with the reason) those lacking a patient or study."""
    good = []
    for event in events:
        why = records.unrecordable(event)
        if why:
            orthanc.LogWarning("radchain: {} event not recorded on chain: {}".format(event["type"], why))
            # never the raw event: the journal says why and what shape, not whose (docs/PSEUDONYMS.md)
            where = {k: (_redact(v) if k == "uri" else v) for k, v in (local or {}).items()}
            SPOOL.journal({"what": "unrecordable", "source": source, "reason": why, **records.event_summary(event),
                           **where})
        else:
            good.append(event)
    if good:
        SPOOL.put_many(good, source=source, local=local)


# -- stores -------------------------------------------------------------------------------------------------
def on_stored(dicom, instance_id):
    try:
        origin = ORIGIN.get(dicom.GetInstanceOrigin(), "UNKNOWN")
        if origin == "DICOM_PROTOCOL" and not RECORD_DICOM_STORES:
            return
        remote = dicom.GetInstanceRemoteAet() if origin == "DICOM_PROTOCOL" else None
        info = inspect_file(dicom.GetInstanceData())
        actor = remote or ("orthanc-" + origin.lower().replace("_", "-"))
        event = records.stored_event(info, actor=actor, actor_ae=remote, peer_ae=OWN_AET, outcome=0, **COMMON)
        _spool([event], "orthanc", {"orthanc_id": instance_id, "origin": origin})
    except DicomFormatError as exc:
        _error(f"stored instance {instance_id} not recorded, malformed", exc)
    except Exception as exc:  # never break Orthanc's store path; but say so loudly
        _error(f"stored instance {instance_id} not recorded", exc)


orthanc.RegisterOnStoredInstanceCallback(on_stored)

MIN_FREE_BYTES = 64 << 20


def cstore_gate(dicom):
    """OnStoredInstance cannot refuse a store, so refuse it here, before Orthanc stores, when its event could
    not be spooled: the modality gets 0xA700 "out of resources" and retries later, instead of the event being
    lost. A statvfs per C-STORE, a few microseconds."""
    if not RECORD_DICOM_STORES:
        return 0
    try:
        st = os.statvfs(SPOOL.pending_dir)
        if st.f_bavail * st.f_frsize < MIN_FREE_BYTES or not os.access(SPOOL.pending_dir, os.W_OK):
            _error("refusing C-STORE", f"spool disk full or not writable: {SPOOL.root}")
            return 0xA700
    except OSError as exc:
        _error("refusing C-STORE", exc)
        return 0xA700
    return 0


orthanc.RegisterIncomingCStoreInstanceFilter(cstore_gate)


def received_guard(raw, origin):
    """Every received instance (REST, C-STORE, plugins), before Orthanc parses it: one bounded walk (no
    hashing, and only when the bytes hold more item tags than MAX_NESTING or are deflated: ~10 us for a CT
    slice otherwise) discards instances past a safety limit (sequences nested deeper than 64, a deflated
    data set inflating past 64 MiB), so Orthanc never stores what the hook refuses to record. Merely
    malformed files are left to Orthanc, which refuses or stores them as it always did. (It cannot save
    Orthanc 1.10.1 from a REST upload of 3,000 nested sequences, which kills it after this hook: docs/DICOM.md.)"""
    try:
        ts, offset = split_file(raw)
        if ts != DEFLATED_LE and raw.count(b"\xfe\xff\x00\xe0") + raw.count(b"\xff\xfe\xe0\x00") <= MAX_NESTING:
            return orthanc.ReceivedInstanceAction.KEEP_AS_IS, None  # too few items to nest too deep (~10 us)
        walk_dataset(memoryview(raw)[offset:], ts)
    except DicomLimitError as exc:
        _error("discarding a received instance", exc)
        return orthanc.ReceivedInstanceAction.DISCARD, None
    except Exception:  # noqa: BLE001 - Orthanc's own parser decides about other defects
        pass
    return orthanc.ReceivedInstanceAction.KEEP_AS_IS, None


if hasattr(orthanc, "RegisterReceivedInstanceCallback"):
    orthanc.RegisterReceivedInstanceCallback(received_guard)


# -- HTTP reads -----------------------------------------------------------------------------------------------
_REST = re.compile(r"^/(instances|series|studies|patients)/([0-9a-f-]{44})(/.*)?$")
_READ_SUFFIX = re.compile(r"^/(file|preview|image-uint8|image-uint16|image-int16|rendered|frames(/.*)?|"
                          r"archive|media|content(/.*)?|attachments/dicom/data|pdf|numpy|matlab|"
                          r"tags|simplified-tags|instances-tags|shared-tags)?/?$")
_DICOMWEB = re.compile(r"^/dicom-web/studies(?:/([0-9.]+)(?:/series/([0-9.]+)(?:/instances/([0-9.]+))?)?)?(/.*)?$")
_recent = {}
_recent_lock = threading.Lock()
COALESCE_SECONDS = 5.0  # a viewer fetching 300 frames of one instance is one read, not 300


def _actor(ip, headers):
    headers = {k.lower(): v for k, v in (headers or {}).items()}
    for h in ("x-radchain-user", "x-forwarded-user", "x-remote-user"):
        if headers.get(h):
            return headers[h]
    auth = headers.get("authorization", "")
    if auth.lower().startswith("basic "):
        try:
            return base64.b64decode(auth[6:]).decode("utf-8", "replace").split(":", 1)[0]
        except ValueError:
            pass
    return f"http-client@{ip}"


def _get(uri):
    try:
        return json.loads(orthanc.RestApiGet(uri))
    except Exception:
        return None


def _resolve(level, oid):
    """Orthanc ID -> (patient id, issuer, study uid, series uids, sop uids)."""
    if level == "patients":
        p = _get(f"/patients/{oid}")
        if not p:
            return []
        return [r for s in p.get("Studies", []) for r in _resolve("studies", s)]
    if level == "studies":
        s = _get(f"/studies/{oid}")
        if not s:
            return []
        pt = s.get("PatientMainDicomTags", {})
        return [(pt.get("PatientID"), pt.get("IssuerOfPatientID"), s["MainDicomTags"].get("StudyInstanceUID"),
                 [], [])]
    if level == "series":
        se = _get(f"/series/{oid}")
        st = _get(f"/series/{oid}/study")
        if not se or not st:
            return []
        pt = st.get("PatientMainDicomTags", {})
        return [(pt.get("PatientID"), pt.get("IssuerOfPatientID"), st["MainDicomTags"].get("StudyInstanceUID"),
                 [se["MainDicomTags"].get("SeriesInstanceUID")], [])]
    inst = _get(f"/instances/{oid}")
    st = _get(f"/instances/{oid}/study")
    se = _get(f"/instances/{oid}/series")
    if not inst or not st or not se:
        return []
    pt = st.get("PatientMainDicomTags", {})
    return [(pt.get("PatientID"), pt.get("IssuerOfPatientID"), st["MainDicomTags"].get("StudyInstanceUID"),
             [se["MainDicomTags"].get("SeriesInstanceUID")], [inst["MainDicomTags"].get("SOPInstanceUID")])]


def _lookup_study(study_uid):
    try:
        hits = json.loads(orthanc.RestApiPost("/tools/lookup", study_uid))
    except Exception:
        return []
    return [r for h in hits if h.get("Type") == "Study" for r in _resolve("studies", h["ID"])]


def _events_for(kind, rows, actor, action, local):
    events = []
    for patient, issuer, study, series, sops in rows:
        events.append(records.base_event(
            kind, patient_id=patient, issuer=issuer, study_uid=study, actor=actor, action=action,
            series_uids=[s for s in series if s] or None, sop_instance_uids=[s for s in sops if s] or None,
            n_instances=len(sops) or None, outcome=0, peer_ae=OWN_AET, **COMMON))
    return events


def http_filter(uri, **request):
    try:
        method = HMETH.get(request.get("method"), "?")
        ip = request.get("ip")
        actor = _actor(ip, request.get("headers"))
        get = request.get("get") or {}
        kind, rows, action = None, [], None
        m = _REST.match(uri)
        if m and method in ("GET", "DELETE"):
            level, oid, rest = m.group(1), m.group(2), m.group(3) or ""
            if method == "DELETE":
                if level in ("studies", "patients") and not rest:
                    kind, action, rows = "study.deleted", "D", _resolve(level, oid)
                elif not rest:
                    kind, action, rows = "instances.accessed", "D", _resolve(level, oid)
            elif _READ_SUFFIX.match(rest) and (rest or level == "instances"):
                kind, action, rows = "instances.accessed", "R", _resolve(level, oid)
        elif uri.rstrip("/") == "/wado" and method == "GET":
            study = get.get("studyUID")
            if study:
                kind, action = "instances.accessed", "R"
                rows = [(p, i, s, [get.get("seriesUID")], [get.get("objectUID")]) for p, i, s, _, _ in
                        _lookup_study(study)]
        elif method == "GET" and _DICOMWEB.match(uri):
            study, series, inst, rest = _DICOMWEB.match(uri).groups()
            if study:
                # QIDO inside a study (.../series, .../instances without a UID) is a query; the rest
                # (WADO-RS: the study, a series, an instance, metadata, rendered, frames) is a read.
                qido = rest in ("/series", "/instances") or (series and rest == "/instances")
                kind, action = ("query", "E") if qido else ("instances.accessed", "R")
                rows = [(p, i, s, [series] if series else [], [inst] if inst else [])
                        for p, i, s, _, _ in _lookup_study(study)]
            else:
                pid = get.get("PatientID") or get.get("00100020")
                suid = get.get("StudyInstanceUID") or get.get("0020000D")
                if suid:
                    kind, action, rows = "query", "E", [(p, i, s, [], []) for p, i, s, _, _ in _lookup_study(suid)]
                elif pid and not any(c in pid for c in "*?"):
                    kind, action, rows = "query", "E", [(pid, None, None, [], [])]
        if kind and rows:
            key = (kind, actor, uri.split("/frames")[0])
            now = time.monotonic()
            with _recent_lock:
                if now - _recent.get(key, -1e9) < COALESCE_SECONDS:
                    return True
                _recent[key] = now
                if len(_recent) > 10000:
                    _recent.clear()
            events = _events_for(kind, rows, actor, action, None)
            _spool(events, "orthanc-http", {"ip": ip, "method": method, "uri": uri})
    except Exception as exc:
        _error(f"HTTP {_redact(uri)} not recorded", exc)
    return True


orthanc.RegisterIncomingHttpRequestFilter(http_filter)


# -- delivery -------------------------------------------------------------------------------------------------
if _CFG.get("Deliver", True) and SETTINGS.rpc_url:
    from node.dicom.delivery import Deliverer  # noqa: E402

    _stop = threading.Event()
    _deliverer = Deliverer(SPOOL, SETTINGS.rpc_url, SETTINGS.rpc_token)
    threading.Thread(target=_deliverer.run_forever, args=(_stop,), name="radchain-deliver", daemon=True).start()

orthanc.LogWarning(f"radchain plugin: recording into {SETTINGS.spool_dir}")
