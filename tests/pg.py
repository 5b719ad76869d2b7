"""A real, throwaway PostgreSQL server for tests: Debian's binaries, a temp cluster on a loopback port.

Set SIGHT_TEST_POSTGRES_URL (``postgresql+asyncpg://user@host:port/db``) to use a running server instead.
"""

from __future__ import annotations

import asyncio
import glob
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from sqlalchemy.engine import make_url


def _bin_dir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if not found:
        raise RuntimeError("PostgreSQL server binaries not found: apt-get install postgresql (as .ci/run does)")
    return Path(found[-1]).parent


class TempPostgres:
    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="sight-pg-"))
        self.bin = _bin_dir()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self._as_postgres = os.geteuid() == 0  # PostgreSQL refuses to run as root

    def _run(self, *args: str) -> None:
        cmd = [str(self.bin / args[0]), *args[1:]]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)

    def start(self) -> str:
        if self._as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
        data = self.root / "data"
        self._run("initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        self._run("pg_ctl", "-D", str(data), "-o", options, "-l", str(self.root / "log"), "-w", "start")
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def fresh_database(server_url: str) -> str:
    """Create an empty database on the server and return its URL."""
    import asyncpg

    url = make_url(server_url)
    name = "sight_test_" + secrets.token_hex(6)

    async def create() -> None:
        conn = await asyncpg.connect(host=url.host, port=url.port, user=url.username, password=url.password,
                                     database=url.database or "postgres")
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(create())
    return url.set(database=name).render_as_string(hide_password=False)
