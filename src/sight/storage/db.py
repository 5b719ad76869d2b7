"""The database: SQLAlchemy's async engine (called ``db`` throughout Sight: "engine" means a model engine) and
sessions on it; SQLite tuned for durability, PostgreSQL through the same URL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def open_db(database_url: str) -> AsyncEngine:
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite":
        connect_args: dict[str, Any] = {}
        if url.get_driver_name() == "asyncpg":
            # A transaction left open by a crashed or cancelled client must not hold row locks for ever.
            connect_args["server_settings"] = {"idle_in_transaction_session_timeout": "60000"}
        return create_async_engine(url, pool_pre_ping=True, connect_args=connect_args)
    if url.database and url.database != ":memory:":
        Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    db = create_async_engine(url, connect_args={"timeout": 30})

    @event.listens_for(db.sync_engine, "connect")
    def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, begin transactions: see _begin_immediate.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(db.sync_engine, "begin")
    def _begin(conn: Any) -> None:
        # Writers take the write lock up front: a deferred transaction that later writes can fail with
        # SQLITE_BUSY whatever the busy timeout, and claims must be atomic across processes. Readers
        # (session_factory(readonly=True)) begin deferred and, under WAL, never block anyone.
        conn.exec_driver_sql(f"BEGIN {conn.get_execution_options().get('sqlite_begin', 'IMMEDIATE')}")

    return db


def read_only(db: AsyncEngine) -> AsyncEngine:
    """``db`` for connections that must not write: on SQLite their transactions begin DEFERRED."""
    return db.execution_options(sqlite_begin="DEFERRED")


def session_factory(db: AsyncEngine, *, readonly: bool = False) -> async_sessionmaker[Any]:
    """Sessions on ``db``; ``readonly`` ones must not write (on SQLite they begin DEFERRED)."""
    return async_sessionmaker(read_only(db) if readonly else db, expire_on_commit=False)


async def migrate(db: AsyncEngine) -> None:
    """Bring the schema to the newest Alembic revision (idempotent)."""
    from alembic import command
    from alembic.config import Config

    def upgrade(connection: Any) -> None:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        config.attributes["connection"] = connection
        command.upgrade(config, "head")

    async with db.begin() as conn:
        await conn.run_sync(upgrade)


async def ping(db: AsyncEngine) -> None:
    async with db.connect() as conn:
        await conn.execute(text("SELECT 1"))
