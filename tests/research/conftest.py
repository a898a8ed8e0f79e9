"""Fixtures for the research-sharing tests: the consortium, store and chain fixtures of tests/conftest.py
and the DICOM helpers of tests/dicom (Orthanc, the audit proxy, sample files) are reused, not copied."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "dicom"))
