"""Alembic environment: runs online against the URL that `shared.db.migrate` passes in."""

from __future__ import annotations

from alembic import context

from shared.db import make_engine
from shared.models import Base

url = context.config.get_main_option("sqlalchemy.url")
assert url, "migrate() sets sqlalchemy.url"
engine = make_engine(url)
with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
