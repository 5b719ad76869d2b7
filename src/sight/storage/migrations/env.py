"""Alembic environment: Sight passes an open connection in ``config.attributes``."""

from alembic import context

from sight.storage.tables import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
