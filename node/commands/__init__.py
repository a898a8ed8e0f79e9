"""One module per `radchain` subcommand; each defines register(subparsers).

node.cli discovers every module here, so adding a command never edits a shared file.
"""
