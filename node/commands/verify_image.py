"""`radchain verify-image`: was an image altered since it was recorded; is it stored at other hospitals too?"""

from __future__ import annotations

import json
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "verify-image", help="check DICOM files against the digests recorded on chain (and find duplicates)",
        description="Computes the SHA-256 of each instance and of its pixel data and looks them up on chain "
                    "through this node: UNCHANGED, METADATA-CHANGED (pixels identical), ALTERED or NOT-RECORDED, "
                    "and DUPLICATE when two hospitals stored the same content. Exit status: 0 all unchanged, "
                    "1 some altered, 3 some not recorded.")
    p.add_argument("--home", required=True, help="node home directory (config.toml: RPC URL; keys/local-pseudonym.key)")
    p.add_argument("files", nargs="+", metavar="FILE", help="DICOM files or directories")
    p.add_argument("--json", action="store_true", help="print one JSON object per file")
    p.set_defaults(func=run)


def run(args) -> int:
    import httpx

    from node.dicom.importer import iter_files
    from node.dicom.verify import ChainReader, summarize_studies, verify_files
    from node.ledger.pseudonym import Pseudonymizer
    from node.runtime.settings import ConfigError, load_config
    from node.runtime.tokenizer import load_local_key

    try:
        cfg = load_config(args.home)
    except ConfigError as exc:
        print(f"radchain verify-image: {exc}", file=sys.stderr)
        return 2
    host, port = cfg.rpc.host, cfg.rpc.port
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    from node.rpc.auth import local_token

    token = local_token(cfg.home)
    reader = ChainReader(f"http://{host}:{port}", token)
    files = [p for p in iter_files(args.files) if p.name.upper() != "DICOMDIR"]
    try:
        verdicts = verify_files(files, reader, Pseudonymizer(load_local_key(cfg.home)))
    except (httpx.HTTPError, RuntimeError) as exc:
        print(f"radchain verify-image: cannot read the chain at {host}:{port}: {exc}", file=sys.stderr)
        return 2
    finally:
        reader.close()
    for v in verdicts:
        if args.json:
            print(json.dumps({"file": v.path, "verdict": v.verdict, "detail": v.detail,
                              "digest": v.info.digest if v.info else None,
                              "pixel_digest": v.info.pixel_digest if v.info else None,
                              "recorded_by": sorted({r.member for r in v.records}),
                              "duplicate_at": v.duplicate_members}))
        else:
            print(f"{v.path}: {v.verdict}{' - ' + v.detail if v.detail else ''}")
            if v.duplicate_members:
                print(f"  DUPLICATE: the same content is stored at {', '.join(v.duplicate_members)}")
    if not args.json:
        for study, members in summarize_studies(verdicts).items():
            print(f"duplicate study {study}: stored at {', '.join(members)}")
    kinds = {v.verdict for v in verdicts}
    if kinds & {"ALTERED", "METADATA-CHANGED"}:
        return 1
    if kinds - {"UNCHANGED"}:
        return 3
    return 0
