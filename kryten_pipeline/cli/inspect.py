"""The read-mostly commands: ``status``, ``snapshots``, ``rollback``, ``diff``, ``search``, ``namespaces``."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from kryten_pipeline.cli.common import (
    EXIT_CANNOT_TELL,
    EXIT_FAILED,
    EXIT_OK,
    open_project_instance,
    settings_and_namespace,
)
from kryten_pipeline.errors import ConfigurationError, NatsUnavailableError
from kryten_pipeline.settings import SETTINGS, Settings, loaded_from_dotenv, setting_text


def cmd_status(args: SimpleNamespace) -> int:
    settings, namespace = settings_and_namespace(args.namespace)
    from kryten_pipeline.snapshot.status import read_snapshot_status

    try:
        payload = asyncio.run(read_snapshot_status(settings, namespace))
    except NatsUnavailableError as exc:
        # Not "inconsistent": nothing can be told without KV.
        print(f"error: cannot tell: {exc}", file=sys.stderr)
        return EXIT_CANNOT_TELL
    if args.json:
        print(json.dumps(payload, indent=2, ensure_ascii=False))
    else:
        current = payload["kv"]["current"] or {}
        sqlite = payload["sqlite"]
        print(f"namespace: {namespace}")
        print(f"kv current: {current.get('snapshot_id') or '-'} ({current.get('item_count', '-')} items, "
              f"revision {payload['kv']['revision'] or '-'})")
        count = sqlite["item_count"] if sqlite["item_count"] is not None else "-"
        print(f"sqlite: {sqlite['snapshot_id'] or '-'} ({count} items) at {sqlite['path']}")
        delivered = payload["object"]
        if delivered["name"]:
            state = f"{delivered['size_bytes']} bytes" if delivered["present"] else "MISSING"
            print(f"object: {delivered['name']} in bucket {delivered['bucket']} ({state})")
        print(f"consistent: {'yes' if payload['consistent'] else 'NO'}")
        for problem in payload["problems"]:
            print(f"  - {problem}")
    return EXIT_OK if payload["consistent"] else EXIT_FAILED


def cmd_snapshots(args: SimpleNamespace) -> int:
    settings, namespace = settings_and_namespace(args.namespace)
    from kryten_pipeline.kv.store import snapshot_store
    from kryten_pipeline.snapshot.files import list_kept_snapshots, live_db_path, read_snapshot_meta

    async def read() -> tuple[list[dict[str, Any]], str | None]:
        async with snapshot_store(settings) as store:
            records = await store.list_snapshots(namespace)
            current = await store.read_current(namespace)
        return records, current.snapshot_id if current else None

    records, current_id = asyncio.run(read())
    kept = set(list_kept_snapshots(settings.data_dir, namespace))
    live = (read_snapshot_meta(live_db_path(settings.data_dir, namespace)) or {}).get("snapshot_id")
    by_id = {r["snapshot_id"]: r for r in records}
    rows = []
    for snapshot_id in sorted(set(by_id) | kept, reverse=True):
        record = by_id.get(snapshot_id, {})
        rows.append({
            "snapshot_id": snapshot_id,
            "created_at": record.get("created_at"),
            "item_count": record.get("item_count"),
            "source": record.get("source"),
            "current": snapshot_id == current_id,
            "live": snapshot_id == live,
            "kept_file": snapshot_id in kept,
            "kv_record": snapshot_id in by_id,
        })
    if args.json:
        print(json.dumps({"namespace": namespace, "snapshots": rows}, indent=2, ensure_ascii=False))
        return EXIT_OK
    if not rows:
        print(f"no snapshots for namespace {namespace!r} yet: run `kryten-pipeline refresh`")
        return EXIT_OK
    print(f"{'snapshot_id':<24} {'items':>8}  {'flags':<18} source")
    for row in rows:
        flags = ",".join(f for f, on in (("current", row["current"]), ("live", row["live"]),
                                         ("kept", row["kept_file"])) if on) or "-"
        items = row["item_count"] if row["item_count"] is not None else "-"
        print(f"{row['snapshot_id']:<24} {items:>8}  {flags:<18} {row['source'] or '-'}")
    return EXIT_OK


def cmd_rollback(args: SimpleNamespace) -> int:
    settings, namespace = settings_and_namespace(args.namespace)
    from kryten_pipeline.snapshot.ids import is_snapshot_id
    from kryten_pipeline.snapshot.rollback import rollback_to

    if not is_snapshot_id(args.to):
        raise ConfigurationError(f"{args.to!r} is not a snapshot id (like 20251218T123456Z-7f3a9c)")
    outcome = asyncio.run(rollback_to(settings, namespace, args.to))
    if args.json:
        print(json.dumps(outcome, indent=2))
    else:
        print(f"namespace {namespace}: current is now {outcome['snapshot_id']} "
              f"(was {outcome['previous_current'] or 'none'}, revision {outcome['current_revision']})")
    return EXIT_OK


def cmd_diff(args: SimpleNamespace) -> int:
    settings, namespace = settings_and_namespace(args.namespace)
    from kryten_pipeline.snapshot.diff import KINDS, diff_snapshot_files
    from kryten_pipeline.snapshot.files import kept_snapshot_path, list_kept_snapshots, live_db_path, read_snapshot_meta
    from kryten_pipeline.snapshot.ids import is_snapshot_id

    kept = list_kept_snapshots(settings.data_dir, namespace)
    live_id = (read_snapshot_meta(live_db_path(settings.data_dir, namespace)) or {}).get("snapshot_id")
    to_id = args.to_id or live_id
    if to_id is None:
        raise ConfigurationError(f"namespace {namespace!r} has no snapshot yet: run `kryten-pipeline refresh`")
    from_id = args.from_id or next((k for k in reversed(kept) if k < to_id), None)
    for name, value in (("--from", from_id), ("--to", to_id)):
        if value is not None and (not is_snapshot_id(value) or value not in kept):
            raise ConfigurationError(
                f"{name} {value}: no kept snapshot with that id (kept: {', '.join(kept) or 'none'})",
                setting="KRYTEN_KEEP_SNAPSHOTS",
            )
    old = kept_snapshot_path(settings.data_dir, namespace, from_id) if from_id else None
    result = diff_snapshot_files(old, kept_snapshot_path(settings.data_dir, namespace, to_id))
    if args.json:
        print(json.dumps(result.to_dict() | {"summary": result.summary()}, indent=2, ensure_ascii=False))
        return EXIT_OK
    print(f"{result.from_snapshot_id or '(none)'} → {result.to_snapshot_id}: {result.summary()}")
    for kind in KINDS:
        for sample in result.samples.get(kind, []):
            change = f"{sample.get('before')!s} → {sample.get('after')!s}" if "before" in sample else ""
            print(f"  {kind:<14} {sample['video_id']:<12} {sample['title'][:60]}  {change}".rstrip())
    return EXIT_OK


def cmd_search(args: SimpleNamespace) -> int:
    settings, namespace = settings_and_namespace(args.namespace)
    from kryten_pipeline.snapshot.files import live_db_path
    from kryten_pipeline.snapshot.search import search_catalog

    live = live_db_path(settings.data_dir, namespace)
    if not live.exists():
        raise ConfigurationError(f"namespace {namespace!r} has no snapshot yet: run `kryten-pipeline refresh`")
    hits = search_catalog(live, args.query, categories=args.category, limit=args.limit)
    if args.json:
        print(json.dumps([hit.to_dict() for hit in hits], indent=2, ensure_ascii=False))
        return EXIT_OK
    if not hits:
        print("no match")
    for hit in hits:
        duration = _clock(hit.duration_seconds) if hit.duration_seconds else "-"
        print(f"{hit.video_id:<12} {duration:>7}  {hit.title}  [{', '.join(hit.categories)}]")
    return EXIT_OK


def _clock(seconds: int) -> str:
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def cmd_namespaces(args: SimpleNamespace) -> int:
    settings = Settings.from_env()
    instance = open_project_instance(settings)
    from kryten_pipeline.dagster_defs.partitions import register_namespaces, registered_namespaces

    if args.action == "add":
        if not args.names:
            raise ConfigurationError("name at least one namespace: `kryten-pipeline namespaces add NS`")
        added = register_namespaces(instance, args.names)
        print(f"added: {', '.join(added)}" if added else "already registered")
        return EXIT_OK
    register_namespaces(instance, settings.namespaces)
    configured = set(settings.namespaces)
    for name in registered_namespaces(instance):
        print(f"{name}{'' if name in configured else '  (registered, not in KRYTEN_NAMESPACES)'}")
    return EXIT_OK


def cmd_config(args: SimpleNamespace) -> int:
    settings = Settings.from_env()  # an invalid value stops here, naming its variable (exit 2)
    from_dotenv = loaded_from_dotenv()
    rows = []
    for spec in SETTINGS:
        is_set = bool(os.environ.get(spec.env, "").strip())
        value = getattr(settings, spec.field)
        rows.append({
            "variable": spec.env,
            "value": None if spec.secret else (str(value) if isinstance(value, Path) else value),
            "secret": spec.secret,
            "set": is_set,
            "from": (".env" if spec.env in from_dotenv else "environment") if is_set else "default",
        })
    if args.json:
        print(json.dumps({"settings": rows}, indent=2, ensure_ascii=False))
        return EXIT_OK
    width = max(len(spec.env) for spec in SETTINGS)
    print(f"{'VARIABLE':<{width}}  {'FROM':<11}  VALUE")
    for row in rows:
        shown = ("(set)" if row["set"] else "-") if row["secret"] else (setting_text(row["value"]) or "-")
        print(f"{row['variable']:<{width}}  {row['from']:<11}  {shown}")
    return EXIT_OK

