"""The DICOM hook: how a hospital's imaging activity reaches the chain.

Four sources feed one durable spool (HOME/spool/, see spool.py), which delivers to the node's RPC:

* proxy.py     a DICOM audit relay between modalities/viewers and the PACS (sans-I/O parser in ul.py, dimse.py)
* atna.py      a syslog receiver for DICOM PS3.15 A.5 audit messages (RFC 5424 over TCP/TLS/UDP)
* importer.py  folder back-fill of DICOM files
* deploy/orthanc/radchain_plugin.py   the Orthanc (orthanc-python) plugin

spool.py, delivery.py, rawdicom.py and records.py use the standard library only, so the Orthanc plugin
(which runs in Debian's embedded python3.11) can import them without a virtual environment.
"""
