"""The DICOM hook: how a hospital's imaging activity reaches the chain.

Four sources feed one durable spool (HOME/spool/, see spool.py), which delivers to the node's RPC:

* proxy.py     a DICOM audit relay between modalities/viewers and the PACS (sans-I/O: ul.py parses PDUs and
               DIMSE commands, auditor.py decides what each association records)
* atna.py      a syslog receiver for DICOM PS3.15 A.5 audit messages (RFC 5424 over mutual TLS; plain TCP/UDP
               from allow-listed addresses only)
* importer.py  folder back-fill of DICOM files
* deploy/orthanc/radchain_plugin.py   the Orthanc (orthanc-python) plugin

logsafe.py keeps peer addresses and AE titles out of logs and rate-limits what refused senders cause.
spool.py, delivery.py, rawdicom.py, records.py, settings.py and logsafe.py use the standard library only (and
node.vocabulary, itself standard library only), so the Orthanc plugin (which runs in Debian's embedded
python3.11) can import them without a virtual environment. Of node/, the hook imports node.vocabulary only
(checked by `make lint`).
"""
