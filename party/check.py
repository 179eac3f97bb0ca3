"""``party check``: what an operator looks at before going live, read from the configured store.

On MongoDB: the server's version, standalone or replica set (so whether transactions and change
streams are used), the indexes present against those expected, the write concern and read
preference in force, whether a change stream opens, and the round trip of a claim. On SQLite: the
file, its journal mode, synchronous setting, schema version and size. Each line that needs fixing
says how; the exit status is 0 when nothing does, 1 when something does (or the store does not
answer), 2 for a bad setting. Opening the store for a check creates nothing on MongoDB (missing
indexes are reported, not made). An entry point (layer 7): it may import anything.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TextIO

from . import config
from .errors import ConfigError, StoreUnavailable
from .log import redact
from .stores import Store, load_backend
from .stores.base import Finding


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``party check`` (the store, as everywhere: ``--store`` or ``PARTY_STORE``)."""
    config.add_arguments(parser, ("store",))


def open_for_check(url: str) -> Store:
    """Open ``url`` without setting anything up (``mongomock://`` is accepted, for tests)."""
    if url.startswith(("mongodb://", "mongodb+srv://", "mongomock://")):
        from .stores.mongo import MongoStore

        return MongoStore.from_url(url, prepare=False)
    return load_backend(url).from_url(url)


def store_url(args: argparse.Namespace) -> str:
    """The store URL: ``--store``, else ``PARTY_STORE``, else the default."""
    given = getattr(args, "store", None) or os.environ.get(config.env_name("store"))
    if given and given.startswith("mongomock://"):
        return given
    environ = {k: v for k, v in os.environ.items() if k == config.env_name("store")}
    return config.load({"store": given}, environ=environ).store


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Print the findings of the configured store; return the exit status."""
    out = out or sys.stdout
    try:
        url = store_url(args)
    except ConfigError as exc:
        print(f"party check: {exc}", file=sys.stderr)
        return 2
    print(f"store: {redact(url)}", file=out)
    try:
        store = open_for_check(url)
    except ConfigError as exc:
        print(f"party check: {exc}", file=sys.stderr)
        return 2
    except StoreUnavailable as exc:
        print(f"PROBLEM  the store does not answer: {exc}", file=out)
        return 1
    try:
        findings = store.describe()
    except StoreUnavailable as exc:
        print(f"PROBLEM  the store does not answer: {exc}", file=out)
        return 1
    finally:
        store.close()
    return report(findings, out)


def report(findings: list[Finding], out: TextIO) -> int:
    """Print ``findings`` as an aligned table, problems and warnings after their line."""
    width = max((len(f.name) for f in findings), default=0)
    for finding in findings:
        print(f"  {finding.name:<{width}}  {finding.value}", file=out)
        if finding.problem:
            print(f"  {'':<{width}}  PROBLEM: {finding.problem}", file=out)
        if finding.warning:
            print(f"  {'':<{width}}  warning: {finding.warning}", file=out)
    problems = sum(1 for f in findings if f.problem)
    warnings = sum(1 for f in findings if f.warning)
    if problems:
        print(f"{problems} problem(s) to fix before going live", file=out)
        return 1
    print("ready" + (f" ({warnings} warning(s))" if warnings else ""), file=out)
    return 0
