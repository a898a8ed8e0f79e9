"""The DICOM audit proxy: a relay between modalities/viewers and the PACS that records what passes.

Design: bytes are relayed PDU by PDU, unmodified (except the called AE title, rewritten to the PACS's), so
the PACS sees exactly what the modality sent and every DIMSE service (C-ECHO, C-STORE, C-FIND, C-GET,
C-MOVE, N-*) and transfer syntax works without the proxy re-encoding anything. A copy of each PDU goes to
the sans-I/O `AssociationAuditor`; data sets are parsed and hashed in worker threads while the PACS is busy,
and a response (the source's acknowledgement) is held only until its event is fsynced in the spool
(node/dicom/workers.py: a few long-lived threads; a finished job's result waits for the answer without waking
the event loop).
Consensus and delivery never sit on this path.

A full pynetdicom SCP+SCU store-and-forward was the other option; it decodes and re-encodes every data set
and topped out around 57 inst/s into Orthanc when measured on a 2-core machine, below the 0.9x goal of
`make bench`, and it would change the bytes the digests are taken over. pynetdicom is used here as an SCU only, to
resolve the patient of a C-MOVE that names only a study (pynetdicom_resolver below).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import threading
import time
from collections.abc import Callable

import trio

from node.dicom import records, ul
from node.dicom.auditor import AssociationAuditor, Commit, Emit, Journal, Prepare, Reject, StudyDirectory
from node.dicom.logsafe import net_label
from node.dicom.spool import Spool, SpoolError
from node.dicom.workers import Job, Workers

log = logging.getLogger("radchain.dicom.proxy")

ARTIM_SECONDS = 30.0      # PS3.8 9.1.5: how long a new connection may take to send its A-ASSOCIATE-RQ
CONNECT_SECONDS = 10.0    # to reach the PACS
IDLE_SECONDS = 3600.0     # an association with no traffic at all for an hour is closed
RECV = 1 << 16


class DicomProxy:
    def __init__(self, spool: Spool, *, pacs: tuple[str, str, int], listen: tuple[str, int],
                 purpose: str = "TREAT", default_issuer: str = "HOSP", allowed_aets: list[str] | None = None,
                 resolver: Callable[[str], tuple[str | None, str | None]] | None = None,
                 locator: Callable[[str, str], bool | None] | None = None, settle_after: float = 10.0):
        self.spool = spool
        self.pacs_aet, self.pacs_host, self.pacs_port = pacs
        self.listen = listen
        self.purpose = purpose
        self.default_issuer = default_issuer
        self.allowed_aets = list(allowed_aets or [])
        self.resolver = resolver
        self.locator = locator          # (study uid, sop uid) -> does the PACS hold it? None: cannot tell
        self.settle_after = settle_after
        self.inflight: set[str] = set()  # staged event names whose PACS answer may still come
        self.directory = StudyDirectory()
        self.threads = max(2, os.cpu_count() or 2)
        self.workers: Workers | None = None  # started by serve()
        self._ids = itertools.count(1)
        self.stats = {"associations": 0, "rejected": 0, "errors": 0, "events": 0}
        self.address: tuple[str, int] | None = None

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        host, port = self.listen
        listeners = await trio.open_tcp_listeners(port, host=host)
        self.address = listeners[0].socket.getsockname()[:2]
        log.info("DICOM proxy listening on %s:%d -> %s@%s:%d", *self.address, self.pacs_aet, self.pacs_host,
                 self.pacs_port)
        self.workers = Workers(self.threads)
        try:
            task_status.started(self.address)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._settle_loop)
                await trio.serve_listeners(self._handle, listeners)
        finally:
            self.workers.close()

    async def _settle_loop(self) -> None:
        while True:
            try:
                await trio.to_thread.run_sync(self.settle_staged, abandon_on_cancel=True)
            except Exception as exc:
                log.error("settling staged events failed: %s", exc)
            await trio.sleep(max(1.0, self.settle_after))

    def settle_staged(self) -> int:
        """Staged C-STORE events whose answer never came (crash, dropped association): ask the PACS whether
        it holds the instance; held -> outcome 0, not held -> 8; PACS unreachable -> try again later."""
        n = 0
        now = time.time()
        for path in self.spool.staged():
            if path.name in self.inflight:
                continue
            try:
                if now - path.stat().st_mtime < self.settle_after:
                    continue
                event = json.loads(path.read_bytes())["event"]
            except OSError:
                continue
            except (ValueError, KeyError):
                # torn by a crash during stage(): never acknowledged to the modality, so never promised
                self.spool.journal({"what": "staged-torn-dropped", "file": path.name})
                self.spool.drop_staged(path.name)
                continue
            if self.locator is None:
                continue
            held = self.locator(event.get("study_uid"), (event.get("sop_instance_uids") or [None])[0])
            if held is None:
                continue
            self.spool.commit_staged(path.name, 0 if held else 8)
            self.spool.journal({"what": "staged-settled", "event_id": event.get("event_id"),
                                "outcome": 0 if held else 8, "by": "PACS C-FIND"})
            n += 1
        return n

    async def _handle(self, client: trio.SocketStream) -> None:
        try:
            peer_host, peer_port = client.socket.getpeername()[:2]
        except OSError:
            await client.aclose()
            return
        assoc_id = f"{os.getpid()}-{next(self._ids)}"
        peer = f"{peer_host}:{peer_port}"
        try:
            await Association(self, client, peer, assoc_id).run()
        except Exception as exc:  # one bad association must never take the proxy down
            self.stats["errors"] += 1
            # the relay's nursery wraps what ended it (a peer hanging up, a protocol error) in a group
            leaves = _leaves(exc)
            expected = all(isinstance(e, _EXPECTED) for e in leaves)
            why = "; ".join(f"{type(e).__name__}: {e}" for e in leaves)
            # peer address and AE titles stay in the journal, never in the log (docs/PSEUDONYMS.md)
            log.error("association %s (from %s) ended with an error: %s", assoc_id, net_label(peer_host), why,
                      exc_info=not expected)
            try:
                self.spool.journal({"what": "association-error", "assoc": assoc_id, "peer": peer, "error": why})
            except OSError:
                pass
        finally:
            await client.aclose()


_EXPECTED = (ul.ProtocolError, OSError, trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError)


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


class Association:
    def __init__(self, proxy: DicomProxy, client: trio.SocketStream, peer: str, assoc_id: str):
        self.proxy = proxy
        self.client = client
        self.peer = peer
        self.pacs: trio.SocketStream | None = None
        self.auditor = AssociationAuditor(
            peer=peer, pacs_aet=proxy.pacs_aet, purpose=proxy.purpose, default_issuer=proxy.default_issuer,
            allowed_aets=proxy.allowed_aets, directory=proxy.directory, resolver=proxy.resolver,
            assoc_id=assoc_id)
        self.jobs: dict[object, Job] = {}  # prepare key -> its worker job, until the answer or Emit takes it
        self._unstarted: list[Job] = []
        # prepare key -> staged event name, added by the worker that staged it; once the association has
        # ended (`closed`), a worker no longer marks what it staged in flight: settle_staged takes it
        self.staged: dict = {}
        self.closed = False
        self.aborting = False  # _abort was called: run() sends the A-ABORTs once the relays have stopped
        self.cut: set[trio.SocketStream] = set()  # streams a relay was cancelled while sending on (mid-PDU)
        self.failed: dict = {}  # prepare key -> the error its job raised, for _close_journal
        self.lock = threading.Lock()
        self.nursery: trio.Nursery | None = None

    async def run(self) -> None:
        reader = ul.PduReader()
        first: list[tuple[int, bytes]] = []
        with trio.fail_after(ARTIM_SECONDS):
            while not first:
                data = await self.client.receive_some(RECV)
                if not data:
                    return  # a port probe
                first = reader.feed(data)
        pdu_type, pdu = first[0]
        if pdu_type != ul.A_ASSOCIATE_RQ:
            raise ul.ProtocolError(f"connection opened with {ul.PDU_NAMES[pdu_type]}, not A-ASSOCIATE-RQ")
        self.proxy.stats["associations"] += 1
        actions = self.auditor.feed("up", pdu_type, pdu)
        for a in actions:
            if isinstance(a, Journal):
                self.proxy.spool.journal(a.record)
            elif isinstance(a, Reject):
                self.proxy.stats["rejected"] += 1
                await self.client.send_all(a.pdu)
                return
        try:
            with trio.fail_after(CONNECT_SECONDS):
                self.pacs = await trio.open_tcp_stream(self.proxy.pacs_host, self.proxy.pacs_port)
        except (OSError, trio.TooSlowError) as exc:
            reason = f"PACS {self.proxy.pacs_aet}@{self.proxy.pacs_host}:{self.proxy.pacs_port} unreachable: {exc}"
            log.error("association %s: %s", self.auditor.assoc_id, reason)
            self.proxy.spool.journal({"what": "pacs-unreachable", "peer": self.peer, "error": reason})
            # rejected-transient, service-provider (presentation), temporary congestion (PS3.8 9.3.4)
            await self.client.send_all(ul.associate_rj(2, 3, 1))
            return
        try:
            if self.auditor.called != self.proxy.pacs_aet:
                pdu = ul.with_called_ae(pdu, self.proxy.pacs_aet)
            await self.pacs.send_all(pdu)
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                nursery.start_soon(self._relay, self.client, self.pacs, "up", reader, first[1:])
                nursery.start_soon(self._relay, self.pacs, self.client, "down", ul.PduReader(), [])
        finally:
            # before the first checkpoint: a cancelled proxy (shutdown) must still do this
            with self.lock:
                self.closed = True
                unanswered = list(self.staged.values())
            for name in unanswered:  # never answered: settle_staged will ask the PACS
                self.proxy.inflight.discard(name)
            try:
                self._close_journal()
            finally:
                if self.aborting:
                    await self._send_aborts()
                await self.pacs.aclose()

    def _close_journal(self) -> None:
        """An association that ended without release: say what was left unanswered and why."""
        with self.lock:  # `closed` is set: a job failing from now on journals itself (run() in _prepare)
            failed = [error for key, error in self.failed.items() if key in self.jobs]
        for error in failed:
            self._journal_malformed(error)
        if self.auditor.state not in ("released", "aborted", "rejected"):
            unanswered = len(self.auditor._ops)
            log.warning("association %s closed without release (%d request(s) unanswered)",
                        self.auditor.assoc_id, unanswered)
            self.proxy.spool.journal({"what": "association-closed", "peer": self.peer,
                                      "calling_ae": self.auditor.calling, "assoc": self.auditor.assoc_id,
                                      "state": self.auditor.state, "unanswered": unanswered})

    async def _relay(self, src: trio.SocketStream, dst: trio.SocketStream, direction: str,
                     reader: ul.PduReader, backlog: list) -> None:
        # No traffic for IDLE_SECONDS ends the association: one cancel scope whose deadline each read pushes
        # back (a fail_after around every read cost more than the read's own bookkeeping)
        idle = trio.CancelScope(deadline=trio.current_time() + IDLE_SECONDS)
        try:
            with idle:
                await self._relay_until_closed(src, dst, direction, reader, backlog, idle)
            if idle.cancelled_caught:
                raise trio.TooSlowError(f"{direction}: no traffic for {IDLE_SECONDS:.0f} s")
        finally:
            # one side closed (normally after A-RELEASE-RP): close the other one too
            self.nursery.cancel_scope.cancel()

    async def _relay_until_closed(self, src: trio.SocketStream, dst: trio.SocketStream, direction: str,
                                  reader: ul.PduReader, pdus: list, idle: trio.CancelScope) -> None:
        while True:
            out = []
            for pdu_type, pdu in pdus:
                try:
                    actions = self.auditor.feed(direction, pdu_type, pdu)
                except ul.ProtocolError as exc:
                    self._abort(f"{direction}: {exc}")
                    raise
                for a in actions:
                    if isinstance(a, Prepare):
                        self._prepare(a)
                    elif isinstance(a, Journal):
                        self.proxy.spool.journal(a.record)
                    elif isinstance(a, (Emit, Commit)):
                        if out:
                            await self._send(dst, b"".join(out))
                            out = []
                        self._start_jobs()  # what this action waits for
                        await (self._emit(a) if isinstance(a, Emit) else self._commit(a))
                out.append(pdu)
            if out:
                await self._send(dst, b"".join(out))
            self._start_jobs()
            data = await src.receive_some(RECV)
            if not data:
                return
            idle.deadline = trio.current_time() + IDLE_SECONDS
            try:
                pdus = reader.feed(data)
            except ul.ProtocolError as exc:
                self._abort(f"{direction}: {exc}")
                raise

    def _journal_malformed(self, error: BaseException, what: str | None = None) -> None:
        log.error("%sassociation %s: data set not recorded: %s", f"{what} in " if what else "",
                  self.auditor.assoc_id, error)
        self.proxy.spool.journal({"what": "malformed-dataset", **({"op": what} if what else {}),
                                  "peer": self.peer, "calling_ae": self.auditor.calling,
                                  "assoc": self.auditor.assoc_id, "error": f"{type(error).__name__}: {error}"})

    def _prepare(self, action: Prepare) -> None:
        proxy, key = self.proxy, action.key
        local = {"peer": self.peer, "assoc": self.auditor.assoc_id}

        def run():  # on a worker thread
            try:
                result = action.fn()
            except Exception as exc:
                with self.lock:
                    late = self.closed  # _close_journal has read `failed`: nobody else will say it
                    if not late:
                        self.failed[key] = exc
                if late:
                    self._journal_malformed(exc)
                raise
            if action.stage is None:
                return result, None
            event = action.stage(result)
            why = records.unrecordable(event)
            if why:
                proxy.spool.journal({"what": "unrecordable", "peer": self.peer, "reason": why,
                                     "assoc": self.auditor.assoc_id, "calling_ae": self.auditor.calling})
                return result, None
            name = proxy.spool.stage(event, source="dicom-proxy", local=local)
            with self.lock:
                if not self.closed:
                    self.staged[key] = name
                    proxy.inflight.add(name)
            return result, name

        # started once the PDU that carried the data set is on its way to the PACS (_start_jobs): a
        # worker that woke now would take the GIL from the loop's send, which the PACS is waiting for
        job = self.jobs[key] = proxy.workers.job(run)
        self._unstarted.append(job)

    def _start_jobs(self) -> None:
        for job in self._unstarted:
            self.proxy.workers.start(job)
        self._unstarted.clear()

    async def _commit(self, action: Commit) -> None:
        """The PACS answered a C-STORE: its event (staged while the PACS worked) gets the outcome, then the
        answer goes to the modality."""
        job = self.jobs[action.key]
        try:
            _, name = await job.result()
        except SpoolError as exc:
            del self.jobs[action.key]
            log.critical("spool write failed, aborting association %s: %s", self.auditor.assoc_id, exc)
            self._abort(str(exc))
            raise
        except Exception as exc:
            del self.jobs[action.key]
            with self.lock:
                self.failed.pop(action.key, None)
            self._journal_malformed(exc, action.what)
            return
        # collected: from here on no await until the answer is relayed, so a teardown cannot come between
        del self.jobs[action.key]
        if name is not None:
            with self.lock:
                self.staged.pop(action.key, None)
            try:
                self.proxy.spool.commit_staged(name, action.outcome)
            finally:
                self.proxy.inflight.discard(name)  # committed, or left staged for settle_staged
            self.proxy.stats["events"] += 1

    async def _emit(self, action: Emit) -> None:
        results = {}
        for key in action.keys:
            job = self.jobs.get(key)
            try:
                results[key] = None if job is None else (await job.result())[0]
            except Exception as exc:
                results[key] = exc
        for key in action.keys:  # collected: taken off only now, so a teardown meanwhile still saw them
            self.jobs.pop(key, None)
        with self.lock:
            for key in action.keys:
                self.failed.pop(key, None)
        for value in results.values():
            if isinstance(value, Exception):
                self._journal_malformed(value, action.what)
        events = []
        for event in action.build(results):
            if isinstance(event, Journal):
                self.proxy.spool.journal(event.record)
                continue
            why = records.unrecordable(event)
            if why:
                log.warning("%s in association %s not recorded on chain: %s", action.what,
                            self.auditor.assoc_id, why)
                # the reason and the event's shape, never the raw event (identifiers: docs/PSEUDONYMS.md)
                self.proxy.spool.journal({"what": "unrecordable", "op": action.what, "peer": self.peer,
                                          "assoc": self.auditor.assoc_id, "reason": why,
                                          **records.event_summary(event)})
            else:
                events.append(event)
        if not events:
            return
        local = {"peer": self.peer, "assoc": self.auditor.assoc_id, "op": action.what}
        try:
            # trio's own threads: a query's events must not queue behind other associations' data sets
            await trio.to_thread.run_sync(
                lambda: self.proxy.spool.put_many(events, source="dicom-proxy", local=local))
        except SpoolError as exc:
            # Not durable -> must not acknowledge: abort so the modality retries later.
            log.critical("spool write failed, aborting association %s: %s", self.auditor.assoc_id, exc)
            self._abort(str(exc))
            raise
        self.proxy.stats["events"] += len(events)

    async def _send(self, dst: trio.SocketStream, data: bytes) -> None:
        self.cut.add(dst)  # still there if this send is cancelled: the stream may end mid-PDU
        await dst.send_all(data)
        self.cut.discard(dst)

    def _abort(self, why: str) -> None:
        """Have run() send A-ABORT both ways once the relays have stopped (the caller raises, which stops
        them), and journal why. Sending here could collide with the other relay, still inside a send on that
        stream (trio refuses a second sender: the abort was lost and the association's end logged as a
        crash)."""
        self.aborting = True
        self.proxy.spool.journal({"what": "association-aborted-by-proxy", "assoc": self.auditor.assoc_id,
                                  "peer": self.peer, "calling_ae": self.auditor.calling, "error": why})

    async def _send_aborts(self) -> None:
        """An A-ABORT to each side, 2 s each, the PACS first; a side whose stream a relay left mid-PDU gets
        none (it would read the abort's bytes as the rest of that PDU): closing it is all it can be told."""
        for stream in (self.pacs, self.client):
            if stream in self.cut:
                continue
            with trio.CancelScope(shield=True), trio.move_on_after(2):  # also while the proxy shuts down
                try:
                    await stream.send_all(ul.abort())
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    pass


def pynetdicom_resolver(pacs: tuple[str, str, int], own_aet: str = "RADCHAIN", timeout: float = 5.0):
    """Find the patient of a study by a STUDY-level C-FIND to the PACS (pynetdicom SCU, runs in a thread)."""
    aet, host, port = pacs

    def resolve(study_uid: str) -> tuple[str | None, str | None]:
        from pydicom.dataset import Dataset
        from pynetdicom import AE
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

        ae = AE(ae_title=own_aet)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        assoc = ae.associate(host, port, ae_title=aet)
        if not assoc.is_established:
            return (None, None)
        try:
            q = Dataset()
            q.QueryRetrieveLevel = "STUDY"
            q.StudyInstanceUID = study_uid
            q.PatientID = ""
            q.IssuerOfPatientID = ""
            for status, ident in assoc.send_c_find(q, StudyRootQueryRetrieveInformationModelFind):
                if status and status.Status in (0xFF00, 0xFF01) and ident is not None and ident.get("PatientID"):
                    return (str(ident.PatientID), str(ident.get("IssuerOfPatientID") or "") or None)
        finally:
            assoc.release()
        return (None, None)
    return resolve


def pynetdicom_locator(pacs: tuple[str, str, int], own_aet: str = "RADCHAIN", timeout: float = 5.0):
    """Does the PACS hold this instance? An IMAGE-level C-FIND (pynetdicom SCU); None when it cannot tell."""
    aet, host, port = pacs

    def locate(study_uid: str | None, sop_uid: str | None) -> bool | None:
        from pydicom.dataset import Dataset
        from pynetdicom import AE
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

        if not sop_uid:
            return None
        ae = AE(ae_title=own_aet)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        assoc = ae.associate(host, port, ae_title=aet)
        if not assoc.is_established:
            return None
        found, ok = False, False
        try:
            q = Dataset()
            q.QueryRetrieveLevel = "IMAGE"
            q.StudyInstanceUID = study_uid or ""
            q.SeriesInstanceUID = ""
            q.SOPInstanceUID = sop_uid
            for status, _ident in assoc.send_c_find(q, StudyRootQueryRetrieveInformationModelFind):
                if status and status.Status in (0xFF00, 0xFF01):
                    found = True
                elif status and status.Status == 0x0000:
                    ok = True
        finally:
            assoc.release()
        return True if found else (False if ok else None)
    return locate


async def run_proxy(proxy: DicomProxy, deliverer=None, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """The proxy plus (optionally) spool delivery, owned by one nursery."""
    from node.dicom.delivery import deliver_in_background

    async with trio.open_nursery() as nursery:
        if deliverer is not None:
            nursery.start_soon(deliver_in_background, deliverer)
        address = await nursery.start(proxy.serve)
        task_status.started(address)
